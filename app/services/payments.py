"""Registering the captured payments refunds are made against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from app.domain.errors import InvalidInput, NotFound, PaymentConflict, UnknownPseAccount
from app.domain.models import Payment, RiskLevel
from app.domain.money import Money, parse_rate
from app.domain.ports import AlreadyExists
from app.services.context import Deps, Scoped, refund_deadline
from app.services.ids import new_id

# How far a store's clock may run ahead of ours.
CAPTURE_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RegisterPayment:
    pse_account: str
    pse_payment_id: str
    order_id: str | None
    amount: int
    currency: str
    captured_at: datetime
    payment_method: str | None = None
    risk_level: RiskLevel = RiskLevel.NORMAL
    settlement_currency: str | None = None
    settlement_rate: str | Decimal | None = None


class PaymentService(Scoped):
    """Scoped (`scoped`): payments of other PSE accounts are not found, and
    registering one is refused as for an account that is not configured."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def deadline(self, payment: Payment) -> datetime:
        return refund_deadline(self.deps, payment)

    async def register(self, cmd: RegisterPayment, created_by: str) -> tuple[Payment, bool]:
        """Returns the payment and whether it was created now (False: already known)."""
        if not self.sees(cmd.pse_account):
            # The words of an account that is not configured: a scoped key
            # learns nothing of the others.
            raise UnknownPseAccount(f"no PSE account named {cmd.pse_account!r} is configured")
        self.deps.account(cmd.pse_account)
        now = self.deps.clock.now()
        if cmd.captured_at > now + CAPTURE_CLOCK_SKEW:
            # A capture in the future would push the refund window past what
            # the PSE allows, and no PSE captures ahead of time.
            raise InvalidInput(
                f"captured_at {cmd.captured_at.isoformat()} is in the future "
                f"(more than {int(CAPTURE_CLOCK_SKEW.total_seconds() // 60)} minutes ahead)"
            )
        settlement_currency = cmd.settlement_currency or cmd.currency
        rate = parse_rate(cmd.settlement_rate) if cmd.settlement_rate is not None else Decimal(1)
        if settlement_currency == cmd.currency and rate != 1:
            raise InvalidInput(
                "settlement_rate must be 1 when settlement_currency is the payment's currency"
            )
        candidate = Payment(
            id=new_id("pay"),
            pse_account=cmd.pse_account,
            pse_payment_id=cmd.pse_payment_id,
            order_id=cmd.order_id,
            amount=Money(cmd.amount, cmd.currency),
            captured_at=cmd.captured_at,
            payment_method=cmd.payment_method,
            risk_level=cmd.risk_level,
            settlement_currency=settlement_currency,
            settlement_rate=rate,
            created_at=now,
            updated_at=now,
        )
        for _ in range(2):
            async with self.deps.uow() as uow:
                existing = await uow.payments.get_by_pse(cmd.pse_account, cmd.pse_payment_id)
                if existing is None:
                    try:
                        await uow.payments.add(candidate, created_by)
                    except AlreadyExists:
                        continue  # registered concurrently: compare with that one
                    await uow.commit()
                    return candidate, True
            if existing.registration() != candidate.registration():
                raise PaymentConflict(
                    f"payment {cmd.pse_payment_id} of {cmd.pse_account} is already registered"
                    f" as {existing.id} with different fields"
                )
            return existing, False
        raise PaymentConflict("the payment is being registered concurrently; retry")

    async def get(self, payment_id: str) -> Payment:
        async with self.deps.uow() as uow:
            payment = await uow.payments.get(payment_id)
        if payment is None or not self.sees(payment.pse_account):
            raise NotFound(f"no payment {payment_id}")
        return payment

    async def list(
        self, *, order_id: str | None, limit: int, before_id: str | None
    ) -> list[Payment]:
        async with self.deps.uow() as uow:
            return await uow.payments.list(
                order_id=order_id, limit=limit, before_id=before_id, accounts=self.accounts
            )
