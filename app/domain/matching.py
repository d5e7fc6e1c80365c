"""Which of our refunds a PSE's word about a refund is about.

The PSE's own refund id is the only identity a PSE cannot get wrong: two
different PSE refunds can carry the same reference (a double refund, another
payment's refund carrying our id in its metadata), and applying one to the
other would free money that was paid out, or mark paid one that was not.
"""

from __future__ import annotations

from app.domain.models import Payment, Refund
from app.domain.pse import PseRefund


def reference_claim_problem(refund: Refund, payment: Payment, seen: PseRefund) -> str | None:
    """Why `seen`, which names `refund` only by our reference (its PSE id is not
    the one we know), may not be applied to it; None when it may.

    A reference is trusted only while we have no PSE id of our own for the
    refund, and only when the payment, the currency and the amount agree.
    """
    if refund.pse_refund_id is not None:
        return (
            f"PSE refund {seen.pse_refund_id or '(no id)'} carries our reference, "
            f"but ours is PSE refund {refund.pse_refund_id}"
        )
    if payment.pse_payment_id not in seen.pse_payment_ids:
        named = ", ".join(seen.pse_payment_ids) or "(not given)"
        return (
            f"PSE refund {seen.pse_refund_id or '(no id)'} carries our reference but is on "
            f"payment {named}, ours is {payment.pse_payment_id}"
        )
    if seen.amount != refund.amount:
        said = "(not given)" if seen.amount is None else str(seen.amount)
        return (
            f"PSE refund {seen.pse_refund_id or '(no id)'} carries our reference but is for "
            f"{said}, ours is for {refund.amount}"
        )
    return None
