"""The scheduled drift evaluation: every DRIFT_EVALUATE_EVERY_S, each version in service against its reference.

It runs in the watcher's tick rather than a function of its own: the tick already runs every minute from
Cloud Scheduler with the identity that reads the counters, so monitoring costs no new deploy unit, scheduler
job or service account. The decisions are sentiment_core.monitoring (assess, drift_change); this module reads
the counters, records a change in Firestore and logs it once, never a review's text.

Firestore:
- `monitoring_runs/last`: when the last evaluation started. A tick evaluates only when it is older than the
  interval, and claims it with a conditional write, so ticks racing evaluate once.
- `drift_states/{version}`: the version's current state (drift, reasons, since).
- `drift_events/{version}--{YYYYmmddTHHMMSSZ}--{kind}`: each change, in the same commit as the state, with
  `logged: false` until its line is written: an outbox. The state is written only if it is still what was
  read, so when two ticks race one records the change and only that one logs it; a line lost to a crash
  between the commit and the log is written by a later tick (`_flush`).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sentiment_core import logs
from sentiment_core.monitoring import Assessment, DriftChange, DriftSettings, Window, assess, drift_change
from sentiment_core.records import StoreUnavailable
from sentiment_core.store import DRIFT_STATES, hourly_windows, read_references

logger = logging.getLogger("sentiment.monitoring")

MONITORING_RUNS = "monitoring_runs"

DRIFT_EVENTS = "drift_events"
UNLOGGED_AFTER = timedelta(minutes=2)  # an event still unlogged this long after its commit lost its line
LOGGED_FIELDS = ("predictions", "score_psi", "positive_rate", "unknown_token_rate")


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
    """One line per version and evaluation: the numbers the dashboard charts (accuracy per version lives in
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
    message = "version %s over %d h: %d predictions, drift %s"
    logger.info(message, version, window_hours, statistics["predictions"], assessment.drift, extra=fields)


def change_record(
    change: DriftChange, version: str, assessment: Assessment, window_hours: int, at: datetime
) -> dict[str, Any]:
    """The `drift_events` document of a change: what its log line says, and the state it leaves."""
    return {
        "kind": change.value,
        "model_version": version,
        "drift": change is DriftChange.DETECTED,
        "reasons": list(assessment.reasons),
        "since": at,
        "window_hours": window_hours,
        "statistics": assessment.statistics(),
    }


def log_change(event: Mapping[str, Any]) -> None:
    """The one structured line per change that the log-based metrics count (no review text)."""
    statistics = event["statistics"]
    fields = {
        logs.EVENT_FIELD: event["kind"],
        "model_version": event["model_version"],
        "reasons": list(event["reasons"]),
        "window_hours": event["window_hours"],
        **{name: statistics.get(name) for name in LOGGED_FIELDS},
    }
    version = event["model_version"]
    if event["kind"] == DriftChange.DETECTED.value:
        logger.warning("drift detected for version %s: %s", version, "; ".join(event["reasons"]), extra=fields)
    else:
        reasons = f": {'; '.join(event['reasons'])}" if event["reasons"] else ""
        logger.info("drift resolved for version %s%s", version, reasons, extra=fields)


class DriftWatch:
    """Evaluates versions and records their changes; `db` is a google.cloud.firestore Client."""

    def __init__(self, db: Any, settings: DriftSettings, clock: Callable[[], datetime], timeout_s: float = 10.0):
        self._db = db
        self.settings = settings
        self._clock = clock
        self._timeout = timeout_s

    def check(self, versions: Iterable[str]) -> list[VersionDrift] | None:
        """Each version's assessment over the last `window_hours` UTC hours (the current one included); None when
        the last evaluation is more recent than the interval. A version that left service while drifting is
        resolved ("no longer in service")."""
        from google.api_core import exceptions as gexc

        now = self._clock()
        try:
            if not self._claim(now):
                return None
            self._flush(now)
            in_service = set(versions)
            drifting = self._drifting()
            wanted = sorted(in_service | drifting)
            references = read_references(self._db, set(wanted), self._timeout)
            since = now - timedelta(hours=self.settings.window_hours - 1)
            results = []
            for version in wanted:
                window = sum(hourly_windows(self._db, version, since, self._timeout).values(), Window())
                was = version in drifting
                assessment = assess(window, references.get(version), self.settings, drifting=was)
                if version not in in_service:
                    assessment = dataclasses.replace(assessment, drift=False, reasons=("no longer in service",))
                else:
                    log_evaluation(version, assessment, self.settings.window_hours)
                change = drift_change(was, assessment, in_service=version in in_service)
                recorded = self._record(version, assessment, change, now) if change else None
                results.append(VersionDrift(version, assessment, recorded))
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(f"the drift evaluation could not read or write Firestore: {exc}") from exc
        return results

    def _claim(self, now: datetime) -> bool:
        """Whether this tick evaluates: the last run is older than the interval, and this tick claimed it."""
        from google.api_core import exceptions as gexc

        if self.settings.evaluate_every_s <= 0:
            return True
        last = self._db.collection(MONITORING_RUNS).document("last")
        snapshot = last.get(timeout=self._timeout)
        started = (snapshot.to_dict() or {}).get("started_at") if snapshot.exists else None
        if started is not None and now - started < timedelta(seconds=self.settings.evaluate_every_s):
            return False
        try:
            if snapshot.exists:
                option = self._db.write_option(last_update_time=snapshot.update_time)
                last.update({"started_at": now}, option=option, timeout=self._timeout)
            else:
                last.create({"started_at": now}, timeout=self._timeout)
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Conflict):
            return False  # another tick claimed this run
        return True

    def _drifting(self) -> set[str]:
        from google.cloud.firestore import FieldFilter

        query = self._db.collection(DRIFT_STATES).where(filter=FieldFilter("drift", "==", True))
        return {snapshot.id for snapshot in query.stream(timeout=self._timeout)}

    def _record(self, version: str, assessment: Assessment, change: DriftChange, now: datetime) -> DriftChange | None:
        """Commit the change (state and event), then log it; None when another tick recorded it first."""
        from google.api_core import exceptions as gexc

        state = self._db.collection(DRIFT_STATES).document(version)
        snapshot = state.get(timeout=self._timeout)
        if bool(snapshot.exists and (snapshot.to_dict() or {}).get("drift")) == assessment.drift:
            return None  # the state already says so: another tick recorded this change since we looked
        event = change_record(change, version, assessment, self.settings.window_hours, now)
        tick = uuid.uuid4().hex
        document = self._db.collection(DRIFT_EVENTS).document(f"{version}--{now:%Y%m%dT%H%M%SZ}--{change.value}")
        batch = self._db.batch()
        state_fields = {key: event[key] for key in ("model_version", "drift", "reasons", "since", "window_hours")}
        state_fields["statistics"] = event["statistics"]
        if snapshot.exists:
            batch.update(state, state_fields, option=self._db.write_option(last_update_time=snapshot.update_time))
        else:
            batch.create(state, state_fields)
        batch.create(document, {**event, "tick": tick, "logged": False, "recorded_at": now})
        try:
            batch.commit(timeout=self._timeout)
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Conflict):
            # Another tick won, or our own commit landed and its answer was lost (a retry then conflicts).
            stored = document.get(timeout=self._timeout)
            if not stored.exists or (stored.to_dict() or {}).get("tick") != tick:
                return None
        log_change(event)
        self._mark_logged(document)
        return change

    def _mark_logged(self, document: Any) -> None:
        try:
            document.update({"logged": True}, timeout=self._timeout)
        except Exception:  # the line is written; a later tick may write it once more, never lose it
            logger.warning("could not mark drift event %s as logged", document.id)

    def _flush(self, now: datetime) -> None:
        """Log the changes whose tick committed them but never logged them (it crashed in between)."""
        from google.api_core import exceptions as gexc
        from google.cloud.firestore import FieldFilter

        query = self._db.collection(DRIFT_EVENTS).where(filter=FieldFilter("logged", "==", False))
        for snapshot in query.stream(timeout=self._timeout):
            event = snapshot.to_dict() or {}
            if now - event["recorded_at"] < UNLOGGED_AFTER:
                continue  # its own tick may still be about to log it
            option = self._db.write_option(last_update_time=snapshot.update_time)
            try:
                snapshot.reference.update({"logged": True}, option=option, timeout=self._timeout)
            except gexc.FailedPrecondition:
                continue  # another tick took it
            log_change(event)
