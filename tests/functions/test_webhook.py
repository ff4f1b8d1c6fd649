"""MLflow webhook signatures: only a fresh delivery signed with our secret gets through."""

from __future__ import annotations

import json

import pytest

from tests.functions.conftest import watcher_module

webhook = watcher_module("webhook")

SECRET = b"webhook-secret-0123456789"
NOW = 1_800_000_000
BODY = json.dumps(
    {"entity": "model_version_alias", "action": "created", "timestamp": "x", "data": {"name": "m", "alias": "a"}}
).encode()


def headers(body: bytes = BODY, *, secret: bytes = SECRET, delivery: str = "d-1", timestamp: int = NOW) -> dict:
    return {
        webhook.DELIVERY_ID_HEADER: delivery,
        webhook.TIMESTAMP_HEADER: str(timestamp),
        webhook.SIGNATURE_HEADER: webhook.sign(secret, delivery, str(timestamp), body),
    }


def test_sign_matches_mlflow_own_signature() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    expected = _generate_hmac_signature(SECRET.decode(), "d-1", str(NOW), BODY.decode())

    assert webhook.sign(SECRET, "d-1", str(NOW), BODY) == expected


def signed(delivery: str, timestamp: str, body: bytes = BODY) -> dict:
    """Headers signed with the right secret over any delivery id and timestamp text."""
    return {
        webhook.DELIVERY_ID_HEADER: delivery,
        webhook.TIMESTAMP_HEADER: timestamp,
        webhook.SIGNATURE_HEADER: webhook.sign(SECRET, delivery, timestamp, body),
    }


DEEP = b"[" * 100_000 + b"]" * 100_000
SURROGATE = BODY.replace(b'"m"', b'"m\\ud800"')


def test_verify_signed_fresh_delivery_returns_its_event() -> None:
    delivery = webhook.verify(headers(), BODY, SECRET, now=NOW + 10)

    assert (delivery.delivery_id, delivery.event, delivery.data["name"]) == ("d-1", "model_version_alias.created", "m")


@pytest.mark.parametrize(
    ("request_headers", "body", "now", "reason"),
    [
        (headers(secret=b"another-secret-0123456789"), BODY, NOW, "bad signature"),
        (headers(), BODY.replace(b'"m"', b'"n"'), NOW, "bad signature"),
        (headers(delivery="d-2") | {webhook.DELIVERY_ID_HEADER: "d-1"}, BODY, NOW, "bad signature"),
        (headers(timestamp=NOW - 301), BODY, NOW, "stale timestamp"),
        (headers(timestamp=NOW + 301), BODY, NOW, "stale timestamp"),
        ({k: v for k, v in headers().items() if k != webhook.SIGNATURE_HEADER}, BODY, NOW, "missing"),
        (headers() | {webhook.TIMESTAMP_HEADER: "soon"}, BODY, NOW, "malformed timestamp"),
        (headers(delivery="../../x"), BODY, NOW, "malformed delivery id"),
        (headers(b"[1]"), b"[1]", NOW, "not an MLflow webhook payload"),
        (headers(b"\xff"), b"\xff", NOW, "not JSON"),
        (signed("d-1", "\u00b2"), BODY, NOW, "malformed timestamp"),  # isdigit() passes it, int() refuses it
        (signed("d-1", "\u0661" * 10), BODY, NOW, "malformed timestamp"),  # int() reads other scripts' digits
        (signed("d\u00e9-1", str(NOW)), BODY, NOW, "malformed delivery id"),
        (headers(DEEP), DEEP, NOW, "not JSON"),
        (headers(SURROGATE), SURROGATE, NOW, "not valid Unicode"),
    ],
    ids=[
        "wrong-secret",
        "body-changed",
        "id-swapped",
        "stale",
        "future",
        "unsigned",
        "bad-time",
        "bad-id",
        "not-payload",
        "not-json",
        "superscript-time",
        "arabic-indic-time",
        "non-ascii-id",
        "nested-too-deep",
        "lone-surrogate",
    ],
)
def test_verify_rejects(request_headers: dict, body: bytes, now: int, reason: str) -> None:
    with pytest.raises(webhook.WebhookRejected, match=reason):
        webhook.verify(request_headers, body, SECRET, now=now)
