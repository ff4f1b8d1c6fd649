"""The rollout's window evidence, read back from the counters predict and feedback write, on the emulator."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core.firestore_rest import RestPredictionWriter
from sentiment_core.records import Prediction, expiry
from sentiment_core.rollout import VersionCounts
from sentiment_core.store import Store, window_evidence
from tests.support import PROJECT


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2030, 1, 1, hour, minute, tzinfo=UTC)


def made(version: str, created_at: datetime, model_answer: bool, user_answer: bool | None = None) -> Prediction:
    return Prediction(
        uuid.uuid4().hex, "food", 0.7, model_answer, user_answer, "yelp-sentiment", version, "run", 0.001, created_at
    )


@pytest.fixture
def history(firestore_emulator, clean_db):
    """Three hours of version 1 (predictions, feedback then and later, a server error) and one of version 10."""
    writer = RestPredictionWriter(
        PROJECT, "(default)", 5.0, endpoint=f"http://{firestore_emulator.url}", token=lambda: "owner"
    )
    answered_later = made("1", at(10, 20), model_answer=True)
    try:
        writer.save_predictions([answered_later])
        writer.save_predictions([made("1", at(10, 59), model_answer=False)])
        writer.save_predictions([made("1", at(11), model_answer=True, user_answer=False)])
        writer.save_predictions([made("1", at(12, 30), True), made("1", at(12, 30), False)])
        writer.save_predictions([made("10", at(11, 10), model_answer=True)])
        writer.count_server_error("1", at(12, 5))
    finally:
        writer.close()
    # Answered now, years before 2030's hours: it still counts in the hour its prediction was made.
    Store(clean_db, 5.0).record_feedback(answered_later.id, True)
    return clean_db


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (at(9), (5, 3, 2, 1, 1)),
        (at(10, 45), (5, 3, 2, 1, 1)),  # the hour of `since` counts whole
        (at(11), (3, 2, 1, 0, 1)),
        (at(12, 59), (2, 1, 0, 0, 1)),
        (at(13), (0, 0, 0, 0, 0)),
    ],
)
def test_window_evidence_sums_the_hours_from_that_of_since(history, since: datetime, expected: tuple) -> None:
    assert window_evidence(history, "1", since) == VersionCounts("1", *expected)


def test_window_evidence_of_a_version_excludes_versions_sharing_its_prefix(history) -> None:
    assert window_evidence(history, "10", at(0)) == VersionCounts("10", predictions=1, positive=1)
    assert window_evidence(history, "0", at(0)) == VersionCounts("0")


def test_expire_at_written_by_predicts_writer_is_kept_when_feedback_answers(firestore_emulator, clean_db) -> None:
    """Both writers of a record: predict's creates it with its expiry, feedback's answer leaves the expiry as is
    (an answer does not extend how long a review is kept)."""
    created = datetime.now(UTC).replace(microsecond=0)
    prediction = dataclasses.replace(made("1", created, model_answer=True), expire_at=expiry(created, 7))
    writer = RestPredictionWriter(
        PROJECT, "(default)", 5.0, endpoint=f"http://{firestore_emulator.url}", token=lambda: "owner"
    )
    try:
        writer.save_predictions([prediction])
    finally:
        writer.close()

    answered, changed = Store(clean_db, 5.0).record_feedback(prediction.id, True)

    stored = clean_db.collection("predictions").document(prediction.id).get()
    assert changed
    assert stored.get("expire_at") == created + timedelta(days=7)
    assert Prediction.from_snapshot(stored).expire_at == answered.expire_at == created + timedelta(days=7)
