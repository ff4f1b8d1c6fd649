"""The window counters' naming: UTC hours, fixed width, ids that sort in time order."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sentiment_core.records import (
    NUM_SHARDS,
    Prediction,
    WindowCounts,
    expiry,
    first_retained_hour,
    window_document_id,
    window_hour,
    window_key,
)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 3, 5, 7, 0, 0, tzinfo=UTC), "7--2024030507"),
        (datetime(2024, 3, 5, 7, 59, 59, 999999, tzinfo=UTC), "7--2024030507"),
        (datetime(2024, 12, 31, 23, 30, tzinfo=UTC), "7--2024123123"),
        (datetime(2024, 3, 5, 9, 15, tzinfo=timezone(timedelta(hours=2))), "7--2024030507"),  # the UTC hour
        (datetime(2024, 3, 5, 7, 15), "7--2024030507"),  # naive means UTC, as Firestore's timestamps
    ],
)
def test_window_key_of_a_moment_is_its_utc_hour(moment: datetime, expected: str) -> None:
    assert window_key("7", moment) == expected


def test_window_hour_truncates_to_the_hour_in_utc() -> None:
    moment = datetime(2024, 3, 5, 9, 15, 42, 7, tzinfo=timezone(timedelta(hours=2)))

    assert window_hour(moment) == datetime(2024, 3, 5, 7, tzinfo=UTC)


@pytest.mark.parametrize("shard", [0, NUM_SHARDS - 1])
def test_window_document_id_names_version_hour_and_shard(shard: int) -> None:
    assert window_document_id("12", datetime(2024, 1, 2, 3, 4, tzinfo=UTC), shard) == f"12--2024010203--{shard}"


@pytest.mark.parametrize("shard", [-1, NUM_SHARDS])
def test_window_document_id_outside_the_shards_raises(shard: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        window_document_id("12", datetime(2024, 1, 2, tzinfo=UTC), shard)


def test_window_ids_sort_in_time_order_and_stay_inside_their_version_range() -> None:
    start = datetime(2024, 12, 31, 22, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(30)]
    ids = [window_document_id("1", hour, shard) for hour in hours for shard in (0, 9, 15)]

    assert [i.rsplit("--", 1)[0] for i in sorted(ids)] == [i.rsplit("--", 1)[0] for i in ids]
    assert all(window_key("1", start) <= i < "1--~" for i in ids)
    assert not any(window_key("1", start) <= i < "1--~" for i in [window_document_id("10", start, 0), "2--0"])


@pytest.mark.parametrize(
    ("model_answer", "user_answer", "expected"),
    [
        (True, None, WindowCounts(1, 1, 0, 0)),
        (False, None, WindowCounts(1, 0, 0, 0)),
        (True, True, WindowCounts(1, 1, 1, 1)),
        (True, False, WindowCounts(1, 1, 1, 0)),
        (False, False, WindowCounts(1, 0, 1, 1)),
    ],
)
def test_window_counts_of_a_prediction(model_answer: bool, user_answer: bool | None, expected: WindowCounts) -> None:
    prediction = Prediction(
        "0" * 32, "t", 0.5, model_answer, user_answer, "m", "1", "r", 0.0, datetime(2024, 1, 1, tzinfo=UTC)
    )

    assert WindowCounts.of(prediction) == expected
    assert WindowCounts.of(prediction) + WindowCounts(server_errors=2) == dataclasses.replace(expected, server_errors=2)


def test_window_hour_of_a_client_library_timestamp_is_a_plain_utc_hour() -> None:
    from google.api_core.datetime_helpers import DatetimeWithNanoseconds

    stored = DatetimeWithNanoseconds(2024, 3, 5, 7, 42, 1, nanosecond=123456789, tzinfo=UTC)

    assert window_hour(stored) == datetime(2024, 3, 5, 7, tzinfo=UTC)


CREATED = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("days", "expected"),
    [(1, datetime(2026, 3, 2, 23, 30, tzinfo=UTC)), (30, datetime(2026, 3, 31, 23, 30, tzinfo=UTC))],
)
def test_expiry_is_created_at_plus_the_retention_days(days: int, expected: datetime) -> None:
    assert expiry(CREATED, days) == expected


def test_prediction_document_carries_expire_at_and_reads_back_equal() -> None:
    prediction = Prediction("a" * 32, "t", 0.9, True, None, "m", "1", "r", 0.0, CREATED, 0.5, expiry(CREATED, 30))

    document = prediction.to_document()

    assert document["expire_at"] == datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
    assert Prediction.from_document("a" * 32, document) == prediction


def test_prediction_document_stored_before_retention_reads_without_expiry() -> None:
    document = Prediction("a" * 32, "t", 0.9, True, None, "m", "1", "r", 0.0, CREATED).to_document()
    del document["expire_at"], document["known_fraction"]

    assert Prediction.from_document("a" * 32, document).expire_at is None


@pytest.mark.parametrize(
    ("now", "days", "expected"),
    [
        (datetime(2026, 3, 31, 12, 0, tzinfo=UTC), 30, datetime(2026, 3, 1, 13, tzinfo=UTC)),
        (datetime(2026, 3, 31, 12, 59, tzinfo=UTC), 30, datetime(2026, 3, 1, 13, tzinfo=UTC)),
        (datetime(2026, 3, 2, 0, 30, tzinfo=UTC), 1, datetime(2026, 3, 1, 1, tzinfo=UTC)),
    ],
)
def test_first_retained_hour_is_the_first_whole_hour_no_record_of_which_has_expired(
    now: datetime, days: int, expected: datetime
) -> None:
    first = first_retained_hour(now, days)

    assert first == expected
    assert expiry(first, days) > now  # its first record is still kept; the hour before's first may be gone
    assert expiry(first - timedelta(hours=1), days) <= now
