"""Feedback tokens: an HMAC of the prediction id, so only whoever received a prediction can answer for it."""

from __future__ import annotations

import base64
import hashlib
import hmac

_CONTEXT = b"yelp-sentiment feedback v1\0"


def feedback_token(secret: bytes, prediction_id: str) -> str:
    """URL-safe token (43 characters) bound to one prediction id."""
    digest = hmac.new(secret, _CONTEXT + prediction_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify_feedback_token(secret: bytes, prediction_id: str, token: str) -> bool:
    """Constant-time comparison; False for anything that is not ASCII (no token this service issues is)."""
    if not token.isascii():  # a lone surrogate cannot even be encoded: a wrong token, never an exception
        return False
    return hmac.compare_digest(feedback_token(secret, prediction_id).encode(), token.encode("ascii"))
