"""GET /monitoring: each version's last hours against its reference, on the real Firestore emulator.

Predictions are stored as predict stores them (records and counters in one commit, RestPredictionWriter), the
reference as staging copies it (store.save_reference); the answer's numbers are then recomputed from the stored
records. Handlers run in-process with a fixed clock where the hours matter, and through the real function
otherwise.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest
from google.cloud import firestore

from localdev import services
from sentiment_core import http
from sentiment_core.config import ConfigError
from sentiment_core.monitoring import (
    LENGTH_EDGES,
    MAX_WINDOW_HOURS,
    PROBABILITY_BINS,
    DriftSettings,
    Reference,
    psi,
)
from sentiment_core.records import window_hour
from sentiment_core.store import Store, save_reference
from tests.functions.conftest import SECRET, STORE_TIMEOUT_S, call, feedback_module
from tests.support import monitored_prediction, review_answers, save_predictions

service = feedback_module("feedback_service")

NOW = datetime(2030, 3, 4, 15, 40, tzinfo=UTC)
SETTINGS = DriftSettings()  # the defaults: at least 200 predictions, PSI above 0.2, ...
VALIDATION = review_answers(1000, seed=1)
REFERENCE = Reference.of([p for p, _ in VALIDATION], [t for _, t in VALIDATION], None, threshold=0.5)
HOURLY_FIELDS = {
    "start",
    "predictions",
    "positive_rate",
    "estimated_accuracy",
    "feedback_accuracy",
    "feedback",
    "score_psi",
    "unknown_token_rate",
}


def monitoring(
    db: firestore.Client, query: str = "", settings: DriftSettings = SETTINGS, now: datetime = NOW
) -> dict[str, Any]:
    """GET /monitoring answered in-process at `now`."""
    with flask.Flask(__name__).test_request_context(f"/monitoring{query}"):
        response = service.handle_monitoring(flask.request, lambda: db, settings, STORE_TIMEOUT_S, clock=lambda: now)
    assert response.status_code == 200
    return response.get_json()["monitoring"]


def from_records(records: list[dict[str, Any]], reference: Reference | None) -> dict[str, Any]:
    """The statistics of some stored records, computed here from their fields."""
    probabilities = [r["probability"] for r in records]
    edges = (*LENGTH_EDGES, math.inf)
    histogram, lengths = [0] * PROBABILITY_BINS, [0] * len(edges)
    for record in records:
        histogram[min(int(record["probability"] * PROBABILITY_BINS), PROBABILITY_BINS - 1)] += 1
        lengths[next(i for i, edge in enumerate(edges) if len(record["text"]) < edge)] += 1
    answered = [r for r in records if r["has_feedback"]]
    return {
        "predictions": len(records),
        "positive_rate": sum(r["model_answer"] for r in records) / len(records),
        "estimated_accuracy": sum(max(p, 1 - p) for p in probabilities) / len(records),
        "feedback": len(answered),
        "feedback_accuracy": sum(r["correct"] for r in answered) / len(answered) if answered else None,
        "probability_histogram": histogram,
        "score_psi": psi(histogram, reference.counts.probability) if reference else None,
        "length_psi": psi(lengths, reference.counts.length) if reference else None,
    }


def stored(db: firestore.Client, version: str, since: datetime) -> list[dict[str, Any]]:
    """The version's records made from the hour `since` on."""
    query = db.collection("predictions").where(filter=firestore.FieldFilter("model_version", "==", version))
    return [r for r in (s.to_dict() for s in query.stream()) if r["created_at"] >= since]


def assert_matches(answer: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        if isinstance(value, float):
            assert answer[name] == pytest.approx(value, abs=1e-6), name
        else:
            assert answer[name] == value, name


@pytest.fixture
def traffic(firestore_emulator, clean_db) -> firestore.Client:
    """Version 5 (with a reference) over three hours of the last day and once 30 hours ago, some answers given
    with the prediction and one later; version 4, staged before monitoring, with no reference."""
    answers = review_answers(90, seed=2)
    hours = [NOW - timedelta(hours=5), NOW - timedelta(hours=1), NOW]
    predictions = [
        monitored_prediction("5", p, hours[i % 3], text, user_answer=(p >= 0.5) != (i % 7 == 0) if i % 4 else None)
        for i, (p, text) in enumerate(answers)
    ]
    predictions.append(monitored_prediction("5", 0.9, NOW - timedelta(hours=30)))
    predictions += [monitored_prediction("4", p, NOW - timedelta(hours=2), t) for p, t in answers[:10]]
    save_predictions(firestore_emulator.url, predictions)
    save_reference(clean_db, "5", REFERENCE)
    # An answer given now to a prediction of five hours ago counts in the hour the prediction was made.
    Store(clean_db, STORE_TIMEOUT_S).record_feedback(predictions[0].id, True)
    return clean_db


def test_monitoring_numbers_equal_those_recomputed_from_the_stored_records(traffic) -> None:
    answer = monitoring(traffic, "?hours=24")

    since = window_hour(NOW) - timedelta(hours=23)
    records = stored(traffic, "5", since)
    version = answer["versions"]["5"]
    assert (answer["window_hours"], answer["since"]) == (24, since.isoformat().replace("+00:00", "Z"))
    assert answer["min_predictions"] == SETTINGS.min_predictions
    assert sorted(answer["versions"]) == ["4", "5"]
    assert len(records) == 90  # the prediction of 30 hours ago is outside the window
    assert_matches(version, from_records(records, REFERENCE))
    assert version["reference_probability_histogram"] == list(REFERENCE.counts.probability)
    assert version["reference_positive_rate"] == pytest.approx(REFERENCE.positive_rate, abs=1e-6)
    # Fewer predictions than the rule needs: no verdict, whatever the numbers say.
    assert (version["enough_data"], version["drift"], version["reasons"]) == (False, False, [])
    assert version["alert"] is None


def test_monitoring_hourly_has_one_entry_per_hour_with_counters_equal_to_its_records(traffic) -> None:
    version = monitoring(traffic)["versions"]["5"]

    by_hour: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for record in stored(traffic, "5", window_hour(NOW) - timedelta(hours=23)):
        by_hour[window_hour(record["created_at"])].append(record)
    starts = [entry["start"] for entry in version["hourly"]]
    assert starts == [hour.isoformat().replace("+00:00", "Z") for hour in sorted(by_hour)]
    assert [window_hour(NOW) - hour for hour in sorted(by_hour)] == [timedelta(hours=h) for h in (5, 1, 0)]
    for entry, hour in zip(version["hourly"], sorted(by_hour), strict=True):
        expected = from_records(by_hour[hour], REFERENCE)
        del expected["probability_histogram"], expected["length_psi"]
        assert set(entry) >= HOURLY_FIELDS
        assert_matches(entry, expected)
    assert sum(entry["predictions"] for entry in version["hourly"]) == version["predictions"]


def test_monitoring_of_a_version_without_a_reference_compares_nothing(traffic) -> None:
    version = monitoring(traffic)["versions"]["4"]

    assert version["predictions"] == 10
    assert version["reference_probability_histogram"] is None
    for name in ("score_psi", "length_psi", "reference_positive_rate", "reference_unknown_token_rate"):
        assert version[name] is None, name
    assert (version["enough_data"], version["drift"], version["reasons"]) == (False, False, [])
    assert sum(version["probability_histogram"]) == 10
    assert version["estimated_accuracy"] is not None
    assert [entry["score_psi"] for entry in version["hourly"]] == [None]


@pytest.mark.parametrize(
    ("query", "settings", "predictions"),
    [
        ("?hours=1", SETTINGS, 30),  # the current hour only
        ("?hours=2", SETTINGS, 60),
        ("?hours=24", SETTINGS, 90),
        (f"?hours={MAX_WINDOW_HOURS}", SETTINGS, 91),  # 30 hours ago too
        ("", SETTINGS, 90),  # DRIFT_WINDOW_HOURS' default, 24
        ("", DriftSettings(window_hours=6), 90),
        ("", DriftSettings(window_hours=5), 60),
    ],
    ids=["1", "2", "24", "168", "default", "setting-6", "setting-5"],
)
def test_monitoring_hours_choose_the_hours_ending_with_the_current_one(
    traffic, query: str, settings: DriftSettings, predictions: int
) -> None:
    answer = monitoring(traffic, query, settings)

    assert answer["versions"]["5"]["predictions"] == predictions
    assert answer["window_hours"] == (int(query.split("=")[1]) if query else settings.window_hours)


def test_monitoring_of_a_shifted_stream_is_drift_with_its_reasons_and_the_same_stream_is_not(
    firestore_emulator, clean_db
) -> None:
    # Version 6 answers as on validation; version 7 says "positive, surely" to nearly everything, on short texts.
    steady = [monitored_prediction("6", p, NOW, t) for p, t in VALIDATION[:300]]
    shifted = [monitored_prediction("7", 0.9 + (i % 10) / 100, NOW, "ok") for i in range(300)]
    save_predictions(firestore_emulator.url, steady + shifted)
    for version in ("6", "7"):
        save_reference(clean_db, version, REFERENCE)

    versions = monitoring(clean_db)["versions"]

    assert (versions["6"]["enough_data"], versions["6"]["drift"], versions["6"]["reasons"]) == (True, False, [])
    assert versions["6"]["score_psi"] < SETTINGS.max_psi
    drifting = versions["7"]
    assert (drifting["enough_data"], drifting["drift"]) == (True, True)
    assert [reason.split()[0] for reason in drifting["reasons"]] == ["score_psi", "length_psi", "positive_rate"]
    assert drifting["score_psi"] == pytest.approx(
        psi(drifting["probability_histogram"], REFERENCE.counts.probability), abs=1e-6
    )
    assert drifting["positive_rate"] == 1.0


def test_monitoring_shows_the_drift_state_the_watcher_recorded(traffic) -> None:
    since = NOW - timedelta(minutes=10)
    # As registry_watcher's drift_watch.py records a change (its statistics omitted here).
    traffic.collection("drift_states").document("5").set(
        {"model_version": "5", "drift": True, "reasons": ["score_psi 0.412 > 0.2"], "since": since, "window_hours": 24}
    )
    traffic.collection("drift_states").document("4").set({"model_version": "4", "drift": "yes"})  # unreadable

    versions = monitoring(traffic)["versions"]

    assert versions["5"]["alert"] == {
        "drift": True,
        "reasons": ["score_psi 0.412 > 0.2"],
        "since": "2030-03-04T15:30:00Z",
    }
    assert versions["4"]["alert"] is None


def test_monitoring_with_no_traffic_in_the_hours_lists_no_version(clean_db) -> None:
    assert monitoring(clean_db, "?hours=3") == {
        "window_hours": 3,
        "since": "2030-03-04T13:00:00Z",
        "min_predictions": SETTINGS.min_predictions,
        "versions": {},
    }


def test_monitoring_when_firestore_hangs_is_a_503_within_the_bound(firestore_emulator, traffic) -> None:
    app = flask.Flask(__name__)

    def answer() -> http.ApiError:
        with app.test_request_context("/monitoring"):
            with pytest.raises(http.ApiError) as raised:
                service.handle_monitoring(flask.request, lambda: traffic, SETTINGS, STORE_TIMEOUT_S, clock=lambda: NOW)
            return raised.value

    # The freeze ends first, then the pool waits for its thread: a hung read cannot outlive the test.
    with ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as hung:
        hung.enter_context(services.frozen(firestore_emulator.pid))
        error = pool.submit(answer).result(timeout=30)

    assert (error.status, error.code, error.headers) == (503, "store_unavailable", {"Retry-After": "5"})


# --- Through the real function ------------------------------------------------------------------------------


def test_monitoring_through_the_function_answers_the_contract(feedback_url, firestore_emulator, clean_db) -> None:
    made = datetime.now(UTC) - timedelta(hours=2)  # hours from an hour boundary: the test cannot straddle one
    save_predictions(firestore_emulator.url, [monitored_prediction("8", p, made, t) for p, t in VALIDATION[:20]])
    save_reference(clean_db, "8", REFERENCE)

    answer = call(feedback_url + "/monitoring")

    assert answer.status == 200
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json["monitoring"]
    assert body["window_hours"] == 24
    version = body["versions"]["8"]
    contract = {
        "predictions": int,
        "drift": bool,
        "reasons": list,
        "score_psi": float,
        "positive_rate": float,
        "reference_positive_rate": float,
        "unknown_token_rate": type(None),  # the writer reported no known-token fraction
        "reference_unknown_token_rate": type(None),
        "estimated_accuracy": float,
        "feedback_accuracy": type(None),
        "feedback": int,
        "hourly": list,
    }
    assert {name: type(version[name]) for name in contract} == contract
    assert version["predictions"] == 20
    assert len(version["probability_histogram"]) == len(version["reference_probability_histogram"]) == 20
    assert [set(entry) >= HOURLY_FIELDS for entry in version["hourly"]] == [True]
    assert datetime.fromisoformat(version["hourly"][0]["start"]) == window_hour(made)
    assert not math.isnan(version["score_psi"])


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?hours=0", "invalid_hours"),
        ("?hours=169", "invalid_hours"),
        ("?hours=-1", "invalid_hours"),
        ("?hours=1.5", "invalid_hours"),
        ("?hours=24h", "invalid_hours"),
        ("?hours=", "invalid_hours"),
        ("?hours=%2024", "invalid_hours"),  # " 24"
        ("?hours=024", "invalid_hours"),
        ("?hours=%D9%A3", "invalid_hours"),  # Arabic-Indic three: a digit to str.isdigit, not to the pattern
        ("?hours=99999999999999999999", "invalid_hours"),
        ("?hours=1&hours=2", "invalid_parameter"),
        ("?window=24", "unknown_parameter"),
    ],
)
def test_monitoring_with_bad_hours_is_a_400_with_a_stable_code(feedback_url, query: str, code: str) -> None:
    answer = call(feedback_url + "/monitoring" + query)

    assert (answer.status, answer.error_code) == (400, code)
    assert answer.headers["Content-Type"] == "application/json"


def test_settings_read_the_drift_rule_from_the_watchers_drift_variables() -> None:
    env = {"FEEDBACK_TOKEN_SECRET": SECRET}

    assert service.Settings.from_env(env).drift == DriftSettings()
    drift = service.Settings.from_env(env | {"DRIFT_WINDOW_HOURS": "6", "DRIFT_MIN_PREDICTIONS": "50"}).drift
    assert (drift.window_hours, drift.min_predictions) == (6, 50)
    with pytest.raises(ConfigError, match="DRIFT_WINDOW_HOURS must be between 1 and 168"):
        service.Settings.from_env(env | {"DRIFT_WINDOW_HOURS": "200"})


@pytest.mark.parametrize(("raw", "hours"), [(None, 24), ("1", 1), ("9", 9), ("100", 100), ("168", 168)])
def test_parse_hours_accepts_whole_numbers_from_1_to_168(raw: str | None, hours: int) -> None:
    assert service.parse_hours(raw, 24) == hours


@pytest.mark.parametrize("raw", ["0", "169", "1000", "+5", "5 ", "1_0", "٣", "", "0x10"])
def test_parse_hours_refuses_anything_else(raw: str) -> None:
    with pytest.raises(http.ApiError, match="hours must be a whole number from 1 to 168"):
        service.parse_hours(raw, 24)
