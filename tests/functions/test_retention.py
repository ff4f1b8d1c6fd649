"""Retention on the emulator: records expire (Firestore's TTL policy, which the emulator does not run, stood in
for by deleting what has expired), counters keep their totals, and the records-vs-counters check agrees over the
retained window (sentiment_core.records.first_retained_hour) while the lifetime totals no longer do."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from google.cloud.firestore_v1.base_query import FieldFilter

from sentiment_core.records import expiry, first_retained_hour, window_hour
from tests.functions.conftest import counted_from_records, counters, window_counters
from tests.support import monitored_prediction, save_predictions

RETENTION_DAYS = 30


def made(at: datetime, user_answer: bool | None = None):
    """A prediction of version 1 made at `at`, as predict stores it with a retention of RETENTION_DAYS."""
    prediction = monitored_prediction("1", 0.9, at, user_answer=user_answer)
    return dataclasses.replace(prediction, expire_at=expiry(at, RETENTION_DAYS))


def delete_expired(db, now: datetime) -> int:
    """What the TTL policy does, some time after each record's expire_at: delete it (and nothing else)."""
    expired = list(db.collection("predictions").where(filter=FieldFilter("expire_at", "<", now)).stream())
    for snapshot in expired:
        snapshot.reference.delete()
    return len(expired)


def test_counters_agree_with_the_records_over_the_retained_window_after_expired_records_are_deleted(
    firestore_emulator, clean_db
) -> None:
    now = datetime.now(UTC)
    # The last one: made at the start of the hour that was `now - 30 days`, expired since, deleted: that hour is
    # not in the retained window.
    expired = [made(now - timedelta(days=45), True), made(now - timedelta(days=31), False)]
    expired.append(made(window_hour(now - timedelta(days=RETENTION_DAYS))))
    kept = [made(now - timedelta(days=29), True), made(now - timedelta(hours=2)), made(now, False)]
    save_predictions(firestore_emulator.url, expired + kept)

    assert delete_expired(clean_db, now) == 3
    since = first_retained_hour(now, RETENTION_DAYS)
    windowed = {name: 0 for name in ("predictions", "feedback", "correct")}
    for (version, hour), window in window_counters(clean_db).items():
        if version == "1" and hour >= since:
            windowed = {name: windowed[name] + window[name] for name in windowed}

    # Counters keep their totals: the lifetime check no longer agrees once records expire...
    assert counters(clean_db)["1"] == {"predictions": 6, "feedback": 4, "correct": 2}
    assert counted_from_records(clean_db, "1") == {"predictions": 3, "feedback": 2, "correct": 1}
    # ...the check over the retained window does: window counters from that hour against the records made since.
    assert counted_from_records(clean_db, "1", since) == windowed == {"predictions": 3, "feedback": 2, "correct": 1}
