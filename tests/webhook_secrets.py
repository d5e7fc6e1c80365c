"""A well-formed webhook secret of each provider's format, for configurations in tests."""

from __future__ import annotations

import base64

WELL_FORMED = {
    "sandbox": "whsec_" + base64.b64encode(b"sandbox-webhook-secret-0001").decode(),
    "stripe": "whsec_" + "a1B2c3D4" * 4,
    "komoju": "komoju-secret-0001",
    "razorpay": "razorpay-secret-01",
    "payjp": "whook_" + "0123456789abcdef01",
    "xendit": "xnd-callback-token-0123456789abcdef",
    "omise": base64.b64encode(b"omise-secret-0001").decode(),
}
