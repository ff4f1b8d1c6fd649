"""The scheduled drift evaluation (registry_watcher drift_watch) on the Firestore emulator: real records and
counters written by predict's writer, the reference where the watcher keeps it, one recorded change and one log
line per change, even when two ticks race."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core import logs
from sentiment_core.monitoring import DriftChange, DriftSettings, MonitorCounts, Reference, Window, assess
from sentiment_core.store import save_reference
from tests.functions.conftest import watcher_module
from tests.support import monitored_prediction, save_predictions

pytestmark = pytest.mark.system
drift_watch = watcher_module("drift_watch")

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
VERSION = "7"
# Validation: 60% positive, confident answers on short reviews whose words the model knows.
REFERENCE = Reference.of([0.96] * 60 + [0.04] * 40, ["the soup was lovely"] * 100, [1.0] * 100, 0.5)


@pytest.fixture
def writer(firestore_emulator, clean_db) -> str:
    """Where predict's writer stores records and counters (tests.support.save_predictions)."""
    return firestore_emulator.url


def store(firestore_host: str, probabilities: list[float], at: datetime, known: float = 1.0) -> None:
    """Predictions as predict stores them: records and their counters in one commit per 100."""
    made = [monitored_prediction(VERSION, p, at, "the soup was lovely", known_fraction=known) for p in probabilities]
    save_predictions(firestore_host, made)


def watch(db, at: datetime = NOW, every_s: float = 0.0) -> drift_watch.DriftWatch:
    """every_s 0: each check evaluates (the production interval is tested on its own)."""
    return drift_watch.DriftWatch(db, DriftSettings(min_predictions=200, evaluate_every_s=every_s), lambda: at)


def drift_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    formatter = logs.JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "sentiment.monitoring"]
    return [line for line in lines if line.get(logs.EVENT_FIELD, "").startswith("drift_")]


def test_like_validation_is_no_drift_and_records_nothing(writer, clean_db, caplog) -> None:
    save_reference(clean_db, VERSION, REFERENCE)
    store(writer, [0.96] * 180 + [0.04] * 120, NOW)

    (result,) = watch(clean_db).check([VERSION])

    assert (result.assessment.drift, result.change, result.assessment.window.predictions) == (False, None, 300)
    assert not clean_db.collection(drift_watch.DRIFT_STATES).document(VERSION).get().exists
    assert drift_lines(caplog) == []


def test_drift_is_recorded_and_logged_once_then_resolved_by_a_later_window(writer, clean_db, caplog) -> None:
    caplog.set_level(logging.INFO, "sentiment.monitoring")
    save_reference(clean_db, VERSION, REFERENCE)
    store(writer, [0.96] * 150 + [0.04] * 50, NOW, known=0.6)  # 75% positive, 40% of the words unknown

    (first,) = watch(clean_db).check([VERSION])
    (again,) = watch(clean_db).check([VERSION])

    assert (first.change, again.change) == (DriftChange.DETECTED, None)
    state = clean_db.collection(drift_watch.DRIFT_STATES).document(VERSION).get().to_dict()
    assert state["drift"] is True
    assert [reason.split()[0] for reason in state["reasons"]] == ["unknown_token_rate", "positive_rate"]
    (line,) = drift_lines(caplog)
    assert (line["severity"], line[logs.EVENT_FIELD], line["model_version"]) == ("WARNING", "drift_detected", "7")
    assert line["reasons"] == state["reasons"]
    assert "the soup" not in json.dumps(line)  # never a review's text

    later = NOW + timedelta(hours=30)  # the drifting hour has left the 24-hour window
    store(writer, [0.96] * 120 + [0.04] * 80, later)
    (resolved,) = watch(clean_db, later).check([VERSION])

    assert resolved.change is DriftChange.RESOLVED
    assert [line[logs.EVENT_FIELD] for line in drift_lines(caplog)] == ["drift_detected", "drift_resolved"]
    events = [e.to_dict()["kind"] for e in clean_db.collection(drift_watch.DRIFT_EVENTS).stream()]
    assert sorted(events) == ["drift_detected", "drift_resolved"]


def test_two_ticks_racing_record_and_log_the_change_once(writer, clean_db, caplog) -> None:
    save_reference(clean_db, VERSION, REFERENCE)
    store(writer, [0.55] * 300, NOW)  # unsure answers: the score histogram moved
    results: list = []
    start = threading.Barrier(4)

    def tick() -> None:
        start.wait()
        results.extend(watch(clean_db).check([VERSION]))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(str(r.change) for r in results).count(str(DriftChange.DETECTED)) == 1
    assert len(drift_lines(caplog)) == 1
    assert len(list(clean_db.collection(drift_watch.DRIFT_EVENTS).stream())) == 1


def test_a_version_without_a_reference_is_measured_but_never_drifts(writer, clean_db) -> None:
    store(writer, [0.55] * 300, NOW)

    (result,) = watch(clean_db).check([VERSION])

    assert (result.assessment.drift, result.assessment.reference, result.change) == (False, None, None)
    assert result.assessment.statistics()["estimated_accuracy"] == pytest.approx(0.55)


def test_evaluation_runs_once_per_interval_even_when_ticks_race(writer, clean_db) -> None:
    save_reference(clean_db, VERSION, REFERENCE)
    store(writer, [0.96] * 180 + [0.04] * 120, NOW)
    results: list = []
    start = threading.Barrier(4)

    def tick() -> None:
        start.wait()
        results.append(watch(clean_db, every_s=600).check([VERSION]))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(r is not None for r in results) == 1
    assert watch(clean_db, NOW + timedelta(seconds=599), every_s=600).check([VERSION]) is None
    assert watch(clean_db, NOW + timedelta(seconds=600), every_s=600).check([VERSION]) is not None


def test_a_change_committed_by_a_tick_that_crashed_before_logging_is_logged_once_later(clean_db, caplog) -> None:
    assessment = assess(window_of([0.55] * 300), REFERENCE, DriftSettings())
    event = drift_watch.change_record(DriftChange.DETECTED, VERSION, assessment, 24, NOW)
    clean_db.collection(drift_watch.DRIFT_EVENTS).document("crashed").create(
        {**event, "tick": "t", "logged": False, "recorded_at": NOW}
    )

    watch(clean_db, NOW + timedelta(seconds=30)).check([])  # its own tick may still log it: left alone
    assert drift_lines(caplog) == []
    watch(clean_db, NOW + timedelta(minutes=3)).check([])
    watch(clean_db, NOW + timedelta(minutes=4)).check([])

    (line,) = drift_lines(caplog)
    assert (line[logs.EVENT_FIELD], line["model_version"], line["reasons"]) == ("drift_detected", "7", event["reasons"])
    assert clean_db.collection(drift_watch.DRIFT_EVENTS).document("crashed").get().to_dict()["logged"] is True


def test_a_drifting_version_that_left_service_is_resolved_once(writer, clean_db, caplog) -> None:
    caplog.set_level(logging.INFO, "sentiment.monitoring")
    save_reference(clean_db, VERSION, REFERENCE)
    store(writer, [0.55] * 300, NOW)
    (detected,) = watch(clean_db).check([VERSION])

    retiring = {r.version: r for r in watch(clean_db).check(["8"])}  # version 8 took over; 7 no longer serves
    again = watch(clean_db).check(["8"])

    retired = retiring[VERSION]
    assert (detected.change, retired.change, retiring["8"].change) == (DriftChange.DETECTED, DriftChange.RESOLVED, None)
    assert retired.assessment.reasons == ("no longer in service",)
    assert [r.version for r in again] == ["8"]
    assert [line[logs.EVENT_FIELD] for line in drift_lines(caplog)] == ["drift_detected", "drift_resolved"]
    assert clean_db.collection(drift_watch.DRIFT_STATES).document(VERSION).get().to_dict()["drift"] is False


def window_of(probabilities: list[float]) -> Window:
    counts = sum((MonitorCounts.of(p, "the soup was lovely", 1.0) for p in probabilities), MonitorCounts())
    return Window(len(probabilities), sum(p >= 0.5 for p in probabilities), 0, 0, counts)
