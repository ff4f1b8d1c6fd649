"""The Pub/Sub event schema: what the consumer accepts and what it sends to the dead-letter topic."""

from __future__ import annotations

import base64
import json

import pytest

from sentiment_core import events

GOOD = {
    "event_id": "e1",
    "model_name": "yelp-sentiment",
    "model_version": "3",
    "mlflow_run_id": "abc",
    "model_uri": "gs://bucket/yelp-sentiment/v3",
    "sha256": "a" * 64,
    "previous_version": None,
}


def message(data: bytes) -> dict:
    return {"data": base64.b64encode(data).decode(), "attributes": {}}


def test_event_round_trips_through_a_pubsub_message() -> None:
    event = events.ProductionChanged(**GOOD)

    assert events.from_pubsub_message(message(event.to_json())) == event
    assert event.attributes() == {"model_name": "yelp-sentiment", "model_version": "3"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({k: v for k, v in GOOD.items() if k != "sha256"}, "lacks sha256"),
        (GOOD | {"model_version": "03"}, "positive integer"),
        (GOOD | {"model_version": 3}, "non-empty string"),
        (GOOD | {"sha256": "xyz"}, "64 hex"),
        (GOOD | {"model_uri": "http://evil/model"}, "staged folder"),
        ([GOOD], "JSON object"),
    ],
    ids=["missing-field", "leading-zero", "int-version", "bad-sha", "bad-uri", "not-object"],
)
def test_malformed_event_is_invalid(data, reason: str) -> None:
    with pytest.raises(events.InvalidEvent, match=reason):
        events.from_pubsub_message(message(json.dumps(data).encode()))


@pytest.mark.parametrize("msg", [None, {}, {"data": "%%%"}, {"data": base64.b64encode(b"not json").decode()}])
def test_message_without_event_data_is_invalid(msg) -> None:
    with pytest.raises(events.InvalidEvent):
        events.from_pubsub_message(msg)
