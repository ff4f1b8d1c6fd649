"""predict's Idempotency-Key: a retried request never stores a prediction twice, whatever its first attempt got."""

from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from localdev import services
from sentiment_core import http
from sentiment_core.records import Prediction
from tests.functions.conftest import STORE_TIMEOUT_S, call, counters, load_function_module

service = load_function_module("predict", "predict_service")


def key() -> str:
    return uuid.uuid4().hex


def stored_ids(db) -> set[str]:
    return {d.id for d in db.collection("predictions").select([]).stream()}


def predictions_counted(db) -> int:
    return sum(version["predictions"] for version in counters(db).values())


def test_retry_with_the_same_key_and_body_answers_the_stored_prediction_and_stores_nothing(
    predict_url, clean_db
) -> None:
    headers = {"Idempotency-Key": key()}

    first = call(predict_url + "/", {"text": "Lovely soup."}, headers=headers)
    again = call(predict_url + "/", {"text": "Lovely soup."}, headers=headers)

    assert first.status == again.status == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json  # same id, probability, timestamp and feedback token
    assert stored_ids(clean_db) == {first.json["id"]}
    assert predictions_counted(clean_db) == 1


def test_batch_retry_answers_every_stored_prediction_in_order(predict_url, clean_db) -> None:
    headers = {"Idempotency-Key": key()}
    body = {"texts": ["Great pizza.", "Cold fries.", "Great pizza."]}

    first = call(predict_url + "/", body, headers=headers)
    again = call(predict_url + "/", body, headers=headers)

    ids = [p["id"] for p in first.json["predictions"]]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [p["id"] for p in again.json["predictions"]] == ids
    assert len(set(ids)) == 3  # one id per position, even for equal texts
    assert stored_ids(clean_db) == set(ids)
    assert predictions_counted(clean_db) == 3


def test_retry_whose_json_differs_only_in_spacing_and_key_order_is_the_same_request(predict_url, clean_db) -> None:
    headers = {"Idempotency-Key": key(), "Content-Type": "application/json"}
    first = call(predict_url + "/", raw=b'{"text": "Nice.", "is_positive_user_answered": true}', headers=headers)
    again = call(predict_url + "/", raw=b'{"is_positive_user_answered":true,"text":"Nice."}', headers=headers)

    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"text": "Good."}, {"text": "Bad."}),
        ({"text": "Good."}, {"texts": ["Good."]}),
        ({"texts": ["Good."]}, {"texts": ["Good.", "Bad."]}),
        ({"text": "Good."}, {"text": "Good.", "is_positive_user_answered": False}),
    ],
    ids=["other-text", "single-then-batch", "longer-batch", "with-an-answer"],
)
def test_key_reused_with_another_body_is_422_and_stores_nothing(predict_url, clean_db, first, second) -> None:
    headers = {"Idempotency-Key": key()}
    original = call(predict_url + "/", first, headers=headers)
    before = stored_ids(clean_db)

    reused = call(predict_url + "/", second, headers=headers)

    assert original.status == 201
    assert reused.status == 422
    assert reused.error_code == "idempotency_key_reused"
    assert stored_ids(clean_db) == before
    assert predictions_counted(clean_db) == len(before)


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "slash/", "clé", "semi;colon"])
def test_malformed_idempotency_key_is_400_and_stores_nothing(predict_url, clean_db, bad: str) -> None:
    answer = call(
        predict_url + "/",
        raw=b'{"text": "Fine."}',
        headers={"Content-Type": "application/json", "Idempotency-Key": bad},
    )

    assert answer.status == 400
    assert answer.error_code == "invalid_idempotency_key"
    assert stored_ids(clean_db) == set()


def test_without_a_key_every_request_stores_a_new_prediction(predict_url, clean_db) -> None:
    first = call(predict_url + "/", {"text": "Same words."})
    second = call(predict_url + "/", {"text": "Same words."})

    assert first.status == second.status == 201
    assert first.json["id"] != second.json["id"]
    assert "Idempotent-Replayed" not in second.headers
    assert predictions_counted(clean_db) == 2


def test_200_concurrent_retries_of_one_key_store_one_prediction(predict_url, clean_db) -> None:
    headers = {"Idempotency-Key": key()}

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(
            pool.map(lambda _: call(predict_url + "/", {"text": "Busy bistro."}, headers=headers), range(200))
        )

    created = [a for a in answers if a.status == 201]
    assert {a.status for a in answers} <= {201, 503}
    assert created  # how many got through before the store's bound depends on the machine's load
    assert len({a.json["id"] for a in created}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in created) <= 1  # only the attempt that stored it
    assert stored_ids(clean_db) == {created[0].json["id"]}
    assert predictions_counted(clean_db) == 1


def test_503_while_firestore_is_frozen_then_retry_with_the_same_key_stores_exactly_once(
    predict_url, firestore_emulator, clean_db
) -> None:
    """The first attempt's commit may land after its 503: the retry must answer it, not store a second."""
    headers = {"Idempotency-Key": key()}
    with services.frozen(firestore_emulator.pid):
        frozen = call(predict_url + "/", {"text": "Slow service, good food."}, headers=headers)
    deadline = time.monotonic() + STORE_TIMEOUT_S * 5
    while time.monotonic() < deadline:
        retried = call(predict_url + "/", {"text": "Slow service, good food."}, headers=headers)
        if retried.status == 201:
            break
        time.sleep(0.2)

    assert frozen.status == 503
    assert frozen.error_code == "store_unavailable"
    assert "same Idempotency-Key is safe" in frozen.json["error"]["message"]
    assert frozen.headers["Retry-After"]
    assert retried.status == 201
    assert stored_ids(clean_db) == {retried.json["id"]}
    assert predictions_counted(clean_db) == 1


# The pure parts (the unit tier: no server).


def test_prediction_ids_from_a_key_are_stable_distinct_per_position_and_valid_ids() -> None:
    ids = service.prediction_ids("k-1", 3)

    assert ids == service.prediction_ids("k-1", 3)
    assert len(set(ids)) == 3
    assert set(ids).isdisjoint(service.prediction_ids("k-2", 3))
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_request_fingerprint_ignores_key_order_but_not_values() -> None:
    a = service.request_fingerprint({"text": "x", "is_positive_user_answered": True})
    b = service.request_fingerprint({"is_positive_user_answered": True, "text": "x"})
    c = service.request_fingerprint({"text": "x", "is_positive_user_answered": False})

    assert a == b != c


def prediction(prediction_id: str, text: str = "Good.") -> Prediction:
    return Prediction(prediction_id, text, 0.9, True, None, "m", "1", "run", 0.001, datetime(2026, 1, 1, tzinfo=UTC))


OURS = [prediction("a" * 32), prediction("b" * 32)]
LATER_ATTEMPT = [dataclasses.replace(p, created_at=datetime(2026, 1, 2, tzinfo=UTC)) for p in OURS]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ([(p, "f") for p in OURS], (OURS, False)),
        ([(p, "f") for p in LATER_ATTEMPT], (LATER_ATTEMPT, True)),
    ],
    ids=["our-own-commit-whose-answer-was-lost-is-not-a-replay", "an-earlier-attempts-records-are-a-replay"],
)
def test_resolve_existing_answers_the_stored_predictions(stored, expected) -> None:
    assert service.resolve_existing(OURS, stored, "f") == expected


@pytest.mark.parametrize(
    "stored",
    [
        [(OURS[0], "other"), (OURS[1], "other")],
        [(OURS[0], "f"), None],
        [(OURS[0], None), (OURS[1], None)],
    ],
    ids=["another-body", "a-shorter-batch-stored-under-the-key", "stored-without-a-key"],
)
def test_resolve_existing_key_used_for_another_body_is_422(stored) -> None:
    with pytest.raises(http.ApiError) as raised:
        service.resolve_existing(OURS, stored, "f")

    assert (raised.value.status, raised.value.code) == (422, "idempotency_key_reused")
