"""Who is looking at a console page: the signed-in key and its session."""

from __future__ import annotations

from dataclasses import dataclass

from app.console.errors import ConsoleForbidden
from app.console.formatting import roles
from app.domain.console import ConsoleSession, Flash
from app.domain.models import Actor, Approver
from app.domain.records import ApiKey, Role


@dataclass(frozen=True, slots=True)
class Viewer:
    key: ApiKey
    session: ConsoleSession

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def roles(self) -> str:
        return roles(self.key)

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    @property
    def flashes(self) -> tuple[Flash, ...]:
        return self.session.flashes

    @property
    def actor(self) -> Actor:
        """The key as the services record it: the same actor as through the API."""
        return Actor(self.key.id, self.key.name)

    @property
    def approver(self) -> Approver:
        level = self.key.effective_approval_level
        if level is None:
            raise ConsoleForbidden(
                "This key has no approval level, so it cannot approve or reject refunds."
            )
        return Approver(self.actor, level)

    def can(self, *allowed: Role) -> bool:
        """Whether the key has one of `allowed` (an admin has them all)."""
        return self.key.has_any(*allowed)

    def require(self, *allowed: Role) -> None:
        if not self.can(*allowed):
            names = ", ".join(role.value for role in allowed)
            raise ConsoleForbidden(
                f"This needs one of the roles {names}; this key is {self.roles}."
            )
