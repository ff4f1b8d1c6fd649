"""The retrain check's decisions: pure functions over the state document `retraining/{model}` and what a tick saw.

No I/O and no clock here (retrain.py applies the effects, through sentiment_core.deployment_store.StateDocument).

When does a run start? When no FINISHED MLflow run carries the current fingerprint, nothing is running
(neither an execution of the check nor a recent RUNNING run with the fingerprint that someone else started),
the last start is at least `min_interval_s` old (debounce: data arriving file by file starts one run, not one
per file), and the fingerprint is not backing off. A failed run of fingerprint F is retried after
`backoff_s * 2 ** (failures - 1)` (capped at MAX_BACKOFF_S), `failures` counting the consecutive failures of F.
A new fingerprint is not held back by an old fingerprint's backoff (new data or settings may be the fix), only by
the debounce, so starts stay bounded to one per `min_interval_s` whatever happens: never a loop of starts.
A run that succeeded while MLflow shows no finished run with its fingerprint (the job tagged another one) is not
started again for that fingerprint: it is reported, not retried.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

MAX_BACKOFF_S = 24 * 3600.0
# A claim whose start was never recorded (the tick crashed between claiming and starting): a failure after this.
START_GRACE_S = 600.0


class Status(StrEnum):
    """An execution's state, as the state document and the job runners say it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Action(StrEnum):
    """What a tick decided (the `action` of POST / and of the log line)."""

    UP_TO_DATE = "up_to_date"  # a finished run has the current fingerprint
    NO_DATA = "no_data"  # the data location holds no training data
    RUNNING = "running"  # an execution is running: wait for it
    DEBOUNCED = "debounced"  # changed, but the last start was under min_interval_s ago
    BACKING_OFF = "backing_off"  # the last run of this fingerprint failed: retry at next_attempt_at
    START = "start"  # claimed: start one execution
    STARTED = "started"  # the runner took it: its name recorded
    SUCCEEDED = "succeeded"  # the running execution ended well: recorded
    FAILED = "failed"  # the running execution failed, timed out or never started: recorded, backoff set
    EXPORTED = "exported"  # the feedback watermark advanced past a written file


class Kind(StrEnum):
    """What a history entry of `retraining/{model}/history` records."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPORTED = "exported"


@dataclasses.dataclass(frozen=True)
class Policy:
    min_interval_s: float = 3600.0
    backoff_s: float = 600.0
    timeout_s: float = 7200.0

    def backoff(self, failures: int) -> timedelta:
        """The wait after `failures` consecutive failures of one fingerprint (at least one)."""
        exponent = min(max(failures, 1) - 1, 32)  # 2**32 times any backoff is past the cap
        return timedelta(seconds=min(self.backoff_s * 2**exponent, MAX_BACKOFF_S))


@dataclasses.dataclass(frozen=True)
class Execution:
    """The last execution the check started: why, and how it ended."""

    id: str  # the check's id (RETRAIN_EXECUTION of the job, the run's retrain_execution tag)
    fingerprint: str
    started_at: datetime
    status: Status
    reason: str = ""  # why it was started
    name: str | None = None  # the runner's name for it, once started
    finished_at: datetime | None = None
    detail: str = ""  # how it ended

    def to_document(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status.value}

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Execution:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        return cls(**fields | {"status": Status(data["status"])})


@dataclasses.dataclass(frozen=True)
class FeedbackExport:
    """Where the feedback export stands: answers up to `watermark` are exported; the last file and when."""

    watermark: datetime | None = None  # the newest `feedback_at` exported
    at: datetime | None = None  # when the last file was written
    uri: str | None = None
    rows: int = 0


@dataclasses.dataclass(frozen=True)
class RetrainState:
    """The document `retraining/{model}`."""

    last: Execution | None = None
    failures: int = 0  # consecutive failed runs of last.fingerprint
    next_attempt_at: datetime | None = None  # after a failure: the earliest retry of that fingerprint
    export: FeedbackExport = FeedbackExport()

    def to_document(self, before: RetrainState | None = None) -> dict[str, Any]:
        """Every field, always (an update replaces each of them): the document is small."""
        return {
            "last": self.last.to_document() if self.last else None,
            "failures": self.failures,
            "next_attempt_at": self.next_attempt_at,
            "export": dataclasses.asdict(self.export),
        }

    @classmethod
    def from_document(cls, data: dict[str, Any] | None) -> RetrainState:
        data = data or {}
        export = {k: v for k, v in (data.get("export") or {}).items() if k in FeedbackExport.__dataclass_fields__}
        return cls(
            last=Execution.from_document(data["last"]) if data.get("last") else None,
            failures=int(data.get("failures") or 0),
            next_attempt_at=data.get("next_attempt_at"),
            export=FeedbackExport(**export),
        )


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One entry of `retraining/{model}/history`: what happened, to which execution, and why."""

    kind: Kind
    at: datetime
    execution: str | None = None
    fingerprint: str | None = None
    name: str | None = None
    reason: str | None = None
    detail: str | None = None
    uri: str | None = None
    rows: int | None = None

    def to_document(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return {**fields, "kind": self.kind.value}


@dataclasses.dataclass(frozen=True)
class Observed:
    """What a tick saw before deciding.

    runner: (name, status) of the execution the runner was asked about, or None; it counts only while the state
    still names that execution (a racing tick may have moved on).
    """

    fingerprint: str
    data_objects: int
    trained_run: str | None  # a FINISHED MLflow run tagged with this fingerprint
    runner: tuple[str, Status] | None = None
    # A RUNNING MLflow run tagged with this fingerprint that started within the timeout: training on this data
    # the check did not start (`make demo`, a person's `gcloud run jobs execute train`).
    running_run: str | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    state: RetrainState
    history: tuple[HistoryEntry, ...] = ()
    detail: str = ""
    cancel: str | None = None  # an execution to stop: the check gave up on it (its timeout)

    def writes(self, before: RetrainState) -> bool:
        return self.state != before or bool(self.history)


def decide(state: RetrainState, observed: Observed, policy: Policy, now: datetime, execution_id: str) -> Decision:
    """One tick's decision; `execution_id` names the execution it would start."""
    last = state.last
    if last is not None and last.status is Status.RUNNING:
        return _running(state, last, observed, policy, now)
    if observed.data_objects == 0:
        return Decision(Action.NO_DATA, state, detail="the data location holds no training data")
    fp = observed.fingerprint
    if observed.trained_run is not None:
        return Decision(Action.UP_TO_DATE, state, detail=f"run {observed.trained_run} was trained on fingerprint {fp}")
    if observed.running_run is not None:
        detail = f"run {observed.running_run} is training on fingerprint {fp} already (not started by this check)"
        return Decision(Action.RUNNING, state, detail=detail)
    if last is not None and last.fingerprint == fp and last.status is Status.SUCCEEDED:
        detail = f"execution {last.id} of fingerprint {fp} succeeded, yet MLflow shows no finished run tagged with it"
        return Decision(Action.UP_TO_DATE, state, detail=detail + ": not started again")
    if last is not None and last.fingerprint == fp and state.next_attempt_at and now < state.next_attempt_at:
        detail = (
            f"the last run of fingerprint {fp} failed ({state.failures} in a row): retry at {state.next_attempt_at}"
        )
        return Decision(Action.BACKING_OFF, state, detail=detail)
    if last is not None and now - last.started_at < timedelta(seconds=policy.min_interval_s):
        detail = f"fingerprint {fp} is new, but execution {last.id} started at {last.started_at}"
        return Decision(Action.DEBOUNCED, state, detail=f"{detail}, under {policy.min_interval_s:g} s ago")
    retry = last is not None and last.fingerprint == fp and last.status is Status.FAILED
    if retry:
        reason = f"retry {state.failures + 1} of fingerprint {fp} after {state.failures} failure(s)"
    elif last is None:
        reason = f"no finished run has fingerprint {fp} and none was started before"
    else:
        reason = f"no finished run has fingerprint {fp} (the last execution, {last.id}, had {last.fingerprint})"
    claimed = Execution(execution_id, fp, now, Status.RUNNING, reason=reason)
    new = dataclasses.replace(state, last=claimed, failures=state.failures if retry else 0, next_attempt_at=None)
    return Decision(Action.START, new, detail=reason)


def _running(state: RetrainState, last: Execution, observed: Observed, policy: Policy, now: datetime) -> Decision:
    seen = observed.runner[1] if observed.runner and last.name == observed.runner[0] else None
    age = (now - last.started_at).total_seconds()
    if seen is Status.SUCCEEDED:
        return _ended(state, last, Status.SUCCEEDED, f"execution {last.name} succeeded", policy, now)
    if seen is Status.FAILED:
        return _ended(state, last, Status.FAILED, f"execution {last.name} failed", policy, now)
    if last.name is None and age > START_GRACE_S:
        detail = f"execution {last.id} was claimed {age:.0f} s ago but its start was never recorded"
        return _ended(state, last, Status.FAILED, detail, policy, now)
    if age > policy.timeout_s:
        detail = f"execution {last.name or last.id} was not seen to finish within {policy.timeout_s:g} s: cancelled"
        given_up = _ended(state, last, Status.FAILED, detail, policy, now)
        # Stopped, not only recorded: the retry after the backoff must not train beside it.
        return dataclasses.replace(given_up, cancel=last.name)
    return Decision(
        Action.RUNNING, state, detail=f"execution {last.name or last.id} is running (started {age:.0f} s ago)"
    )


def _ended(
    state: RetrainState, last: Execution, status: Status, detail: str, policy: Policy, now: datetime
) -> Decision:
    ended = dataclasses.replace(last, status=status, finished_at=now, detail=detail)
    entry = HistoryEntry(Kind(status.value), now, last.id, last.fingerprint, last.name, detail=detail)
    if status is Status.SUCCEEDED:
        new = dataclasses.replace(state, last=ended, failures=0, next_attempt_at=None)
        return Decision(Action.SUCCEEDED, new, (entry,), detail)
    failures = state.failures + 1
    retry_at = now + policy.backoff(failures)
    entry = dataclasses.replace(entry, reason=f"failure {failures} in a row: retry at {retry_at.isoformat()}")
    new = dataclasses.replace(state, last=ended, failures=failures, next_attempt_at=retry_at)
    return Decision(Action.FAILED, new, (entry,), f"{detail}; retry at {retry_at.isoformat()}")


def started(state: RetrainState, execution_id: str, name: str, now: datetime) -> Decision:
    """The runner took the claimed execution: its name recorded, with a `started` entry saying why."""
    last = state.last
    if last is None or last.id != execution_id or last.name is not None or last.status is not Status.RUNNING:
        return Decision(Action.STARTED, state, detail=f"execution {execution_id} is no longer the claimed one")
    entry = HistoryEntry(Kind.STARTED, now, last.id, last.fingerprint, name, reason=last.reason)
    new = dataclasses.replace(state, last=dataclasses.replace(last, name=name))
    return Decision(Action.STARTED, new, (entry,), f"execution {name} started: {last.reason}")


def start_failed(state: RetrainState, execution_id: str, error: str, policy: Policy, now: datetime) -> Decision:
    """The runner refused the claimed execution: a failure like any other, with its backoff."""
    last = state.last
    if last is None or last.id != execution_id or last.status is not Status.RUNNING:
        return Decision(Action.FAILED, state, detail=f"execution {execution_id} is no longer the claimed one")
    return _ended(state, last, Status.FAILED, f"execution {execution_id} could not be started: {error}", policy, now)


def exported(state: RetrainState, read: FeedbackExport, done: FeedbackExport, why: str) -> Decision:
    """The export's watermark advanced to `done`, if the state still has the export this tick read (else a racing
    tick advanced it: nothing to write)."""
    if state.export != read:
        return Decision(Action.EXPORTED, state, detail="another tick advanced the feedback watermark")
    entry = HistoryEntry(Kind.EXPORTED, done.at, uri=done.uri, rows=done.rows, reason=why)
    return Decision(Action.EXPORTED, dataclasses.replace(state, export=done), (entry,), why)
