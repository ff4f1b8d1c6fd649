"""The rollout's window evidence, read back from the counters predict and feedback write, on the emulator.

The evidence counts at most EVIDENCE_MAX_PER_CLIENT answers of one client (fingerprint) per version and hour,
whether they come with the prediction (predict's REST writer) or later (feedback's Store); every answer is stored
and counted in the statistics all the same.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core.evidence import EVIDENCE_CLIENTS, evidence_client_id
from sentiment_core.firestore_rest import RestPredictionWriter
from sentiment_core.records import Prediction, expiry
from sentiment_core.rollout import VersionCounts
from sentiment_core.store import Store, window_evidence
from tests.support import PROJECT


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2030, 1, 1, hour, minute, tzinfo=UTC)


def made(
    version: str, created_at: datetime, model_answer: bool, user_answer: bool | None = None, client: str | None = None
) -> Prediction:
    return Prediction(
        uuid.uuid4().hex,
        "food",
        0.7,
        model_answer,
        user_answer,
        "yelp-sentiment",
        version,
        "run",
        0.001,
        created_at,
        client_fingerprint=client if user_answer is not None else None,
    )


def client(name: str):
    """A client's fingerprint for any moment, as feedback computes it (tests name clients, not addresses)."""
    return lambda moment: name


@pytest.fixture
def writer(firestore_emulator):
    rest = RestPredictionWriter(
        PROJECT, "(default)", 5.0, endpoint=f"http://{firestore_emulator.url}", token=lambda: "owner"
    )
    try:
        yield rest
    finally:
        rest.close()


@pytest.fixture
def history(writer, clean_db):
    """Three hours of version 1 (predictions, feedback then and later, a server error) and one of version 10."""
    answered_later = made("1", at(10, 20), model_answer=True)
    writer.save_predictions([answered_later])
    writer.save_predictions([made("1", at(10, 59), model_answer=False)])
    writer.save_predictions([made("1", at(11), model_answer=True, user_answer=False, client="c1")])
    writer.save_predictions([made("1", at(12, 30), True), made("1", at(12, 30), False)])
    writer.save_predictions([made("10", at(11, 10), model_answer=True)])
    writer.count_server_error("1", at(12, 5))
    # Answered now, years before 2030's hours: it still counts in the hour its prediction was made.
    Store(clean_db, 5.0).record_feedback(answered_later.id, True, client("c1"))
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


def stored(db, predictions: list[Prediction]) -> list[Prediction]:
    return [Prediction.from_snapshot(db.collection("predictions").document(p.id).get()) for p in predictions]


def all_feedback(db, version: str) -> int:
    """Every answer in the version's window counters, evidence or not (the statistics' view)."""
    return sum(int(d.to_dict().get("feedback", 0)) for d in db.collection("counter_windows").stream())


@pytest.fixture
def unanswered(writer, clean_db) -> list[Prediction]:
    """Ten predictions of version 1 in the hour at(10) and two in at(11), nobody's answer yet."""
    predictions = [made("1", at(10, i), model_answer=True) for i in range(10)] + [
        made("1", at(11, i), model_answer=True) for i in range(2)
    ]
    writer.save_predictions(predictions)
    return predictions


def test_record_feedback_of_one_client_counts_as_evidence_up_to_the_cap_per_hour(clean_db, unanswered) -> None:
    store = Store(clean_db, 5.0)

    for prediction in unanswered:  # all wrong, all from one client: 10 in hour 10, 2 in hour 11
        store.record_feedback(prediction.id, False, client("script"), max_per_client=3)

    records = stored(clean_db, unanswered)
    assert window_evidence(clean_db, "1", at(10)) == VersionCounts("1", predictions=12, positive=12, feedback=5)
    assert window_evidence(clean_db, "1", at(11)) == VersionCounts("1", predictions=2, positive=2, feedback=2)
    assert [r.counted_as_evidence for r in records] == [True] * 3 + [False] * 7 + [True] * 2
    assert {(r.user_answer, r.client_fingerprint) for r in records} == {(False, "script")}
    assert store.statistics()[0].feedback == 12  # every answer is stored and counted in the statistics
    assert all_feedback(clean_db, "1") == 12


def test_record_feedback_of_many_clients_counts_every_answer_under_their_caps(clean_db, unanswered) -> None:
    store = Store(clean_db, 5.0)

    for i, prediction in enumerate(unanswered[:10]):
        store.record_feedback(prediction.id, i % 2 == 0, client(f"user-{i % 5}"), max_per_client=2)

    assert window_evidence(clean_db, "1", at(10)) == VersionCounts("1", 12, 12, feedback=10, correct=5)
    assert (
        clean_db.collection(EVIDENCE_CLIENTS)
        .document(evidence_client_id("1", at(10), "user-0"))
        .get()
        .to_dict()["counted"]
        == 2
    )


def test_record_feedback_of_no_known_client_is_stored_but_never_evidence(clean_db, unanswered) -> None:
    Store(clean_db, 5.0).record_feedback(unanswered[0].id, True)

    (record,) = stored(clean_db, unanswered[:1])
    assert (record.user_answer, record.client_fingerprint, record.counted_as_evidence) == (True, None, False)
    assert window_evidence(clean_db, "1", at(10)).feedback == 0
    assert all_feedback(clean_db, "1") == 1


def test_save_predictions_answered_at_once_by_one_client_count_up_to_the_cap(writer, clean_db) -> None:
    answered = [made("1", at(10, i), True, user_answer=True, client="script") for i in range(6)]

    saved = [writer.save_predictions([p], max_per_client=4)[0] for p in answered]

    assert [p.counted_as_evidence for p in saved] == [True] * 4 + [False] * 2
    assert [p.counted_as_evidence for p in stored(clean_db, answered)] == [True] * 4 + [False] * 2
    assert window_evidence(clean_db, "1", at(10)) == VersionCounts("1", 6, 6, feedback=4, correct=4)
    assert all_feedback(clean_db, "1") == 6


def test_answers_at_prediction_and_later_share_one_cap(writer, clean_db, unanswered) -> None:
    """predict's answers and feedback's count against the same counter: the cap is the client's, not the route's."""
    at_once = [made("1", at(10, 30 + i), True, user_answer=True, client="script") for i in range(2)]
    for prediction in at_once:
        writer.save_predictions([prediction], max_per_client=3)

    store = Store(clean_db, 5.0)
    later = [store.record_feedback(p.id, True, client("script"), 3)[0] for p in unanswered[:2]]

    assert [p.counted_as_evidence for p in later] == [True, False]
    assert window_evidence(clean_db, "1", at(10)).feedback == 3


@pytest.mark.parametrize("route", ["predict", "feedback"])
def test_concurrent_answers_of_one_client_never_exceed_the_cap(writer, clean_db, unanswered, route: str) -> None:
    """Twelve answers at once, one client, cap 4: the guarded increments never let more than four through (an
    answer that loses the race MAX_CONTENDED times is stored without counting: fewer is safe, more is not)."""
    store = Store(clean_db, 5.0)
    at_once = [made("1", at(10, 40 + i), True, user_answer=False, client="script") for i in range(12)]

    def answer(i: int) -> None:
        if route == "predict":
            try:
                writer.save_predictions([at_once[i]], max_per_client=4)
            finally:
                writer.close()  # this thread's connection
        elif i < 10:
            store.record_feedback(unanswered[i].id, False, client("script"), 4)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(answer, range(12)))

    answered = stored(clean_db, at_once if route == "predict" else unanswered[:10])
    counted = [r for r in answered if r.counted_as_evidence]
    assert 1 <= len(counted) <= 4
    assert window_evidence(clean_db, "1", at(10)).feedback == len(counted)  # counters equal the records
    assert all(r.user_answer is False for r in answered)  # every answer is stored


def test_window_evidence_equals_the_records_counted_as_evidence(writer, clean_db, unanswered) -> None:
    store = Store(clean_db, 5.0)
    for i, prediction in enumerate(unanswered):
        store.record_feedback(prediction.id, i % 3 == 0, client(f"c{i % 2}"), max_per_client=4)

    records = [dataclasses.replace(r) for r in stored(clean_db, unanswered) if r.counted_as_evidence]
    evidence = window_evidence(clean_db, "1", at(10))
    assert (evidence.feedback, evidence.correct) == (len(records), sum(bool(r.correct) for r in records))
