"""What stops a console request before any service is called.

Rules a service refuses are `app.domain.errors.DomainError`s, shown as they
are; these are the console's own: nobody signed in, a form that cannot be
trusted, a role that does not allow the page.
"""

from __future__ import annotations

from app.domain.console import SessionEnd


class SignInRequired(Exception):
    """No usable session: the person is sent to the sign-in page."""

    def __init__(self, ended: SessionEnd | None = None) -> None:
        super().__init__("sign in first")
        self.ended = ended


class CsrfRefused(Exception):
    """A form that does not carry its page's token, or came from another site."""

    code = "csrf_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConsoleForbidden(Exception):
    """The signed-in key lacks the role (or approval level) for this."""

    code = "forbidden"

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence
