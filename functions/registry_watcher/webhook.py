"""MLflow registry webhooks: signature check and what a delivery asks for.

MLflow signs `{delivery_id}.{timestamp}.{body}` with HMAC-SHA256 and sends `X-MLflow-Signature: v1,<base64>`,
`X-MLflow-Delivery-Id` and `X-MLflow-Timestamp` (unix seconds). MLflow retries a delivery that got a 5xx with the
same id, so a delivery id counts as used only once it was processed (see the watcher service).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from sentiment_core.http import has_lone_surrogate

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
MAX_SKEW_S = 300
# Explicit ASCII patterns: str.isdigit() and str.isalnum() also pass other scripts' digits and letters ("²" is a
# digit that int() refuses).
DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
TIMESTAMP = re.compile(r"[0-9]{1,12}")


class WebhookRejected(ValueError):
    """The request is not a fresh delivery signed with our secret."""


@dataclasses.dataclass(frozen=True)
class Delivery:
    delivery_id: str
    entity: str
    action: str
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


def sign(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The header value MLflow would send (tests and the local stack sign with it too)."""
    digest = hmac.new(secret, f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(headers: Mapping[str, str], body: bytes, secret: bytes, now: float | None = None) -> Delivery:
    """The delivery, if signed with `secret` within MAX_SKEW_S of now; WebhookRejected otherwise."""
    delivery_id = headers.get(DELIVERY_ID_HEADER) or ""
    timestamp = headers.get(TIMESTAMP_HEADER) or ""
    signature = headers.get(SIGNATURE_HEADER) or ""
    if not delivery_id or not timestamp or not signature:
        raise WebhookRejected("missing signature headers")
    if not DELIVERY_ID.fullmatch(delivery_id):
        raise WebhookRejected("malformed delivery id")
    if not TIMESTAMP.fullmatch(timestamp):
        raise WebhookRejected("malformed timestamp")
    if not hmac.compare_digest(sign(secret, delivery_id, timestamp, body).encode(), signature.encode()):
        raise WebhookRejected("bad signature")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > MAX_SKEW_S:
        raise WebhookRejected("stale timestamp")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise WebhookRejected("body is not JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise WebhookRejected("body is not an MLflow webhook payload")
    if has_lone_surrogate(payload):  # as every JSON body this system reads: such text cannot even be logged
        raise WebhookRejected("body is not valid Unicode (a lone surrogate escape)")
    return Delivery(
        delivery_id=delivery_id,
        entity=str(payload.get("entity", "")),
        action=str(payload.get("action", "")),
        data=payload["data"],
    )
