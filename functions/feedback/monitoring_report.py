"""GET /monitoring's report: each version's last hours of traffic against its reference, in total and per hour.

The numbers come from the hourly window counters predict and feedback write (never from the records), so a
report reads at most hours x 16 counter documents per version, whatever the traffic. The judgement is
sentiment_core.monitoring.assess, the same rule the watcher's scheduled drift evaluation applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sentiment_core.monitoring import DriftSettings, Reference, Window, assess
from sentiment_core.records import window_hour
from sentiment_core.store import (
    RecordedDrift,
    hourly_windows,
    read_drift_states,
    read_references,
    versions_with_windows,
)

# What each hour of `hourly` carries: enough to draw estimated against realised accuracy and spot the hour a
# shift began; drift itself is judged on the whole window (an hour rarely has the predictions it needs).
HOURLY_FIELDS = (
    "predictions",
    "positive_rate",
    "estimated_accuracy",
    "feedback_accuracy",
    "feedback",
    "score_psi",
    "unknown_token_rate",
)


def iso(moment: datetime) -> str:
    """RFC 3339 with a Z, as every timestamp of the API."""
    return moment.isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class VersionMonitoring:
    """One version's hours (those with counters, in order), its reference if it has one, its recorded drift."""

    hours: Mapping[datetime, Window]
    reference: Reference | None
    recorded: RecordedDrift | None = None

    @property
    def window(self) -> Window:
        return sum(self.hours.values(), Window())

    def as_api(self, settings: DriftSettings) -> dict[str, Any]:
        window, reference = self.window, self.reference
        hourly = []
        for start, hour in self.hours.items():
            statistics = assess(hour, reference, settings).statistics()
            hourly.append({"start": iso(start), **{name: statistics[name] for name in HOURLY_FIELDS}})
        alert = None
        if self.recorded is not None:
            recorded = self.recorded
            alert = {"drift": recorded.drift, "reasons": list(recorded.reasons), "since": iso(recorded.since)}
        return assess(window, reference, settings).statistics() | {
            "probability_histogram": list(window.counts.probability),
            "reference_probability_histogram": list(reference.counts.probability) if reference else None,
            "hourly": hourly,
            "alert": alert,
        }


@dataclasses.dataclass(frozen=True)
class MonitoringReport:
    """Every version with counters in the `window_hours` UTC hours from `since` (the current hour is the last)."""

    window_hours: int
    since: datetime
    versions: Mapping[str, VersionMonitoring]
    settings: DriftSettings

    def as_api(self) -> dict[str, Any]:
        return {
            "window_hours": self.window_hours,
            "since": iso(self.since),
            "min_predictions": self.settings.min_predictions,
            "versions": {version: self.versions[version].as_api(self.settings) for version in sorted(self.versions)},
        }


def first_hour(now: datetime, hours: int) -> datetime:
    """The start of the first of the `hours` UTC hours that end with the current one."""
    return window_hour(now) - timedelta(hours=hours - 1)


def read_report(db: Any, hours: int, settings: DriftSettings, now: datetime, timeout_s: float) -> MonitoringReport:
    """The report over the last `hours` hours; StoreUnavailable when Firestore does not answer within timeout_s.

    `db` is a google.cloud.firestore Client. One query finds the versions, one read each gets their references and
    recorded drift states, then one range query per version reads its counters.
    """
    since = first_hour(now, hours)
    versions = versions_with_windows(db, since, timeout_s)
    references = read_references(db, versions, timeout_s)
    recorded = read_drift_states(db, versions, timeout_s)
    report = {
        version: VersionMonitoring(
            hourly_windows(db, version, since, timeout_s), references.get(version), recorded.get(version)
        )
        for version in sorted(versions)
    }
    return MonitoringReport(hours, since, report, settings)
