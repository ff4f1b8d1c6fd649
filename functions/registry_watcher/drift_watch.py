"""The scheduled drift evaluation: on each scheduled tick, every version in service against its reference.

It runs in the watcher's tick rather than a function of its own: the tick already runs every minute from
Cloud Scheduler with the identity that reads the counters, so monitoring costs no new deploy unit, scheduler
job or service account. The decision is sentiment_core.monitoring (assess, drift_change); this module reads the
counters, records a change in Firestore and logs it once, never a review's text.

Firestore: `drift_states/{version}` holds the version's current state (drift, reasons, since); each change adds
`drift_events/{version}--{YYYYmmddTHHMMSSZ}--{kind}`. The state is written only if it is still what was read
(its update time), so when two ticks race only one records the change, and only that one logs it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sentiment_core import logs
from sentiment_core.monitoring import Assessment, DriftChange, DriftSettings, Window, assess, drift_change
from sentiment_core.records import StoreUnavailable
from sentiment_core.store import hourly_windows, read_references

logger = logging.getLogger("sentiment.monitoring")

DRIFT_STATES = "drift_states"
DRIFT_EVENTS = "drift_events"


@dataclasses.dataclass(frozen=True)
class VersionDrift:
    """One version's evaluation in a tick: its assessment and the change recorded, if any."""

    version: str
    assessment: Assessment
    change: DriftChange | None

    def to_api(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "drift": self.assessment.drift,
            "reasons": list(self.assessment.reasons),
            "predictions": self.assessment.window.predictions,
            "change": self.change.value if self.change else None,
        }


def log_evaluation(version: str, assessment: Assessment, window_hours: int) -> None:
    """One line per version and scheduled tick: the numbers the dashboard charts (accuracy per version lives in
    Firestore, which Cloud Monitoring cannot read). A rate without data is left out, not logged as null."""
    statistics = assessment.statistics()
    numbers = ("predictions", "feedback", "estimated_accuracy", "feedback_accuracy", "score_psi", "unknown_token_rate")
    fields = {
        logs.EVENT_FIELD: logs.MONITORING_EVALUATED,
        "model_version": version,
        "drift": assessment.drift,
        "window_hours": window_hours,
        **{name: statistics[name] for name in numbers if statistics[name] is not None},
    }
    logger.info(
        "version %s over %d h: %d predictions, drift %s",
        version,
        window_hours,
        statistics["predictions"],
        assessment.drift,
        extra=fields,
    )


def log_change(change: DriftChange, version: str, assessment: Assessment, window_hours: int) -> None:
    """The one structured line per change that the log-based metric `drift_detected` counts (no review text)."""
    statistics = assessment.statistics()
    fields = {
        logs.EVENT_FIELD: logs.DRIFT_DETECTED if change is DriftChange.DETECTED else logs.DRIFT_RESOLVED,
        "model_version": version,
        "reasons": list(assessment.reasons),
        "window_hours": window_hours,
        **{name: statistics[name] for name in ("predictions", "score_psi", "positive_rate", "unknown_token_rate")},
    }
    if change is DriftChange.DETECTED:
        logger.warning("drift detected for version %s: %s", version, "; ".join(assessment.reasons), extra=fields)
    else:
        logger.info("drift resolved for version %s", version, extra=fields)


class DriftWatch:
    """Evaluates versions and records their changes; `db` is a google.cloud.firestore Client."""

    def __init__(self, db: Any, settings: DriftSettings, clock: Callable[[], datetime], timeout_s: float = 10.0):
        self._db = db
        self.settings = settings
        self._clock = clock
        self._timeout = timeout_s

    def check(self, versions: Iterable[str]) -> list[VersionDrift]:
        """Each version's assessment over the last `window_hours` UTC hours (the current one included)."""
        wanted = sorted(set(versions))
        now = self._clock()
        since = now - timedelta(hours=self.settings.window_hours - 1)
        references = read_references(self._db, set(wanted), self._timeout)
        results = []
        for version in wanted:
            window = sum(hourly_windows(self._db, version, since, self._timeout).values(), Window())
            assessment = assess(window, references.get(version), self.settings)
            log_evaluation(version, assessment, self.settings.window_hours)
            results.append(VersionDrift(version, assessment, self._record(version, assessment, now)))
        return results

    def _record(self, version: str, assessment: Assessment, now: datetime) -> DriftChange | None:
        from google.api_core import exceptions as gexc

        state = self._db.collection(DRIFT_STATES).document(version)
        try:
            snapshot = state.get(timeout=self._timeout)
            previous = bool(snapshot.exists and (snapshot.to_dict() or {}).get("drift"))
            change = drift_change(previous, assessment)
            if change is None:
                return None
            document = {
                "model_version": version,
                "drift": assessment.drift,
                "reasons": list(assessment.reasons),
                "since": now,
                "window_hours": self.settings.window_hours,
                "statistics": assessment.statistics(),
            }
            batch = self._db.batch()
            if snapshot.exists:
                batch.update(state, document, option=self._db.write_option(last_update_time=snapshot.update_time))
            else:
                batch.create(state, document)
            event_id = f"{version}--{now:%Y%m%dT%H%M%SZ}--{change.value}"
            batch.create(self._db.collection(DRIFT_EVENTS).document(event_id), {"kind": change.value, **document})
            batch.commit(timeout=self._timeout)
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Conflict):
            return None  # another tick recorded (and logged) this change first
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(f"the drift state of version {version} could not be recorded: {exc}") from exc
        log_change(change, version, assessment, self.settings.window_hours)
        return change
