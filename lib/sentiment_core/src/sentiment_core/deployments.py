"""The deployment document `deployments/{model}` and its history entries, as typed values (docs/promotion.md).

Every unit that takes part in a deployment reads and writes this one document through these types:
registry_watcher claims a change, stages it and puts its event in the outbox; the redeploy leases the deploy and
records what serves. The Firestore field names below are what `/status` shows and what tests read: renaming one
is a format change. Nothing here does I/O or reads a clock; `deployment_store` does both.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sentiment_core.events import ProductionChanged
from sentiment_core.rollout import (
    Check,
    Command,
    Reason,
    RolloutAction,
    RolloutDecision,
    RolloutState,
    RolloutStatus,
)


class HistoryKind(StrEnum):
    """What a history entry records (its `kind` field)."""

    STAGED = "staged"
    PUBLISHED = "published"
    REFUSED = "refused"
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    NO_PRODUCTION_VERSION = "no_production_version"
    REANNOUNCED = "reannounced"  # the announced version was still not serving: its event published again
    ROLLOUT_COMMAND = "rollout_command"  # a person asked to abort or complete the rollout (POST /rollout)


@dataclasses.dataclass(frozen=True)
class Lease:
    """Work someone is doing (a claim on a change, a deploy in progress), theirs until it expires: a crashed
    holder blocks nobody for longer."""

    key: str  # the version claimed, or the event id being deployed
    owner: str
    expires_at: datetime

    @classmethod
    def take(cls, key: str, owner: str, now: datetime, seconds: float) -> Lease:
        return cls(key=key, owner=owner, expires_at=now + timedelta(seconds=seconds))

    def active(self, now: datetime) -> bool:
        return now < self.expires_at


@dataclasses.dataclass(frozen=True)
class Desired:
    """The version the registry named on the last look."""

    version: str
    run_id: str
    chosen_by: str  # "alias" or "stage"


@dataclasses.dataclass(frozen=True)
class Target:
    """The last version staged and announced: what should be serving."""

    version: str
    run_id: str
    sha256: str
    model_uri: str
    event_id: str
    staged_at: datetime
    announced_at: datetime | None = None  # when its event was last put in the outbox again (None: only when staged)

    @property
    def last_announced(self) -> datetime:
        return self.announced_at or self.staged_at

    def event(self, model_name: str, previous_version: str | None) -> ProductionChanged:
        """The event that announces this target (the same id each time: the consumer deploys it once)."""
        return ProductionChanged(
            event_id=self.event_id,
            model_name=model_name,
            model_version=self.version,
            mlflow_run_id=self.run_id,
            model_uri=self.model_uri,
            sha256=self.sha256,
            previous_version=previous_version,
        )


@dataclasses.dataclass(frozen=True)
class Serving:
    """The version the last successful redeploy put in front of traffic."""

    version: str
    run_id: str
    sha256: str
    model_uri: str
    event_id: str
    deployed_at: datetime
    revision: str | None = None
    url: str | None = None


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A version the deploy gate refused; not checked again until it is promoted again."""

    version: str
    reason: str
    detail: str
    at: datetime


@dataclasses.dataclass(frozen=True)
class RolloutCommand:
    """A person's request (`POST /rollout`) that the next tick hands to the rollout policy as evidence."""

    command: Command
    at: datetime
    trigger: str  # who or what asked (the route), for the history


@dataclasses.dataclass(frozen=True)
class RolloutOutcome:
    """The rollout policy's last decision: what it did (or why it held) and the checks' numbers behind it."""

    action: RolloutAction
    reason: Reason
    detail: str
    at: datetime
    checks: tuple[Check, ...] = ()

    def to_document(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason.value,
            "detail": self.detail,
            "at": self.at,
            "checks": [check.to_document() for check in self.checks],  # a list: the order a rollback reports
        }

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> RolloutOutcome:
        return cls(
            action=RolloutAction(data["action"]),
            reason=Reason(data["reason"]),
            detail=data.get("detail", ""),
            at=data["at"],
            checks=tuple(Check.from_document(check) for check in data.get("checks") or ()),
        )


@dataclasses.dataclass(frozen=True)
class Rollout:
    """A progressive rollout of candidate_version beside stable_version (docs/promotion.md, "Progressive
    rollout"): where the policy stands, the candidate's share, its last decision and a command waiting for a tick.

    The policy itself (sentiment_core.rollout) sees only `policy_state()`; the rest is what the watcher records
    around it for `/status` and for the next tick.
    """

    state: RolloutStatus
    stable_version: str
    candidate_version: str
    candidate_percent: int
    step: int  # index into ROLLOUT_STEPS, from 0
    started_at: datetime
    step_started_at: datetime
    reason: Reason | None = None  # why it ended
    ended_at: datetime | None = None
    last_decision: RolloutOutcome | None = None
    command: RolloutCommand | None = None

    @property
    def in_progress(self) -> bool:
        return self.state is RolloutStatus.IN_PROGRESS

    def policy_state(self) -> RolloutState:
        """The state the pure policy decides on."""
        return RolloutState(
            stable_version=self.stable_version,
            candidate_version=self.candidate_version,
            started_at=self.started_at,
            step_started_at=self.step_started_at,
            step=self.step,
            status=self.state,
            reason=self.reason,
            ended_at=self.ended_at,
        )

    @classmethod
    def of(cls, policy: RolloutState, percent: int) -> Rollout:
        """A record of the policy's state with the candidate at `percent` (a new rollout: `rollout.start`)."""
        return cls(
            state=policy.status,
            stable_version=policy.stable_version,
            candidate_version=policy.candidate_version,
            candidate_percent=percent,
            step=policy.step,
            started_at=policy.started_at,
            step_started_at=policy.step_started_at,
            reason=policy.reason,
            ended_at=policy.ended_at,
        )

    def decided(self, decision: RolloutDecision, now: datetime) -> Rollout:
        """This rollout once `decision` is applied: its state, share and numbers; the command it saw consumed."""
        outcome = RolloutOutcome(decision.action, decision.reason, decision.detail, now, decision.checks)
        return dataclasses.replace(Rollout.of(decision.state, decision.percent), last_decision=outcome)

    def to_document(self) -> dict[str, Any]:
        return {
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)},
            "state": self.state.value,
            "reason": self.reason.value if self.reason else None,
            "last_decision": self.last_decision.to_document() if self.last_decision else None,
            "command": None
            if self.command is None
            else {"command": self.command.command.value, "at": self.command.at, "trigger": self.command.trigger},
        }

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Rollout | None:
        """The stored rollout; None for one this code cannot read (a newer writer's format), which it then leaves
        alone: an update writes only the fields it has."""
        try:
            command, last = data.get("command"), data.get("last_decision")
            return cls(
                state=RolloutStatus(data["state"]),
                stable_version=data["stable_version"],
                candidate_version=data["candidate_version"],
                candidate_percent=int(data["candidate_percent"]),
                step=int(data["step"]),
                started_at=data["started_at"],
                step_started_at=data["step_started_at"],
                reason=Reason(data["reason"]) if data.get("reason") else None,
                ended_at=data.get("ended_at"),
                last_decision=RolloutOutcome.from_document(last) if last else None,
                command=RolloutCommand(Command(command["command"]), command["at"], command.get("trigger", ""))
                if command
                else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class DeploymentState:
    """What is known of one registered model's deployment (the document's fields).

    outbox: an event committed but not yet confirmed published. claim: a reconcile run staging a change.
    deploying: a redeploy in progress. rollout: the last progressive rollout, in progress or finished (replaced
    by the next one, never cleared: documents stored before rollouts existed have none, and keep that shape).
    """

    desired: Desired | None = None
    target: Target | None = None
    serving: Serving | None = None
    outbox: ProductionChanged | None = None
    refused: Refusal | None = None
    claim: Lease | None = None
    deploying: Lease | None = None
    rollout: Rollout | None = None

    @property
    def in_service(self) -> str | None:
        """The version announced for serving, else the one serving; None when there is neither."""
        if self.target is not None:
            return self.target.version
        return self.serving.version if self.serving is not None else None

    def to_document(self) -> dict[str, Any]:
        """Every field, None where unset, so that an update clears what a decision cleared."""
        return {
            field.name: None if (part := getattr(self, field.name)) is None else _part_document(part)
            for field in dataclasses.fields(self)
            if not (field.name in _ADDED_LATER and getattr(self, field.name) is None)
        }

    @classmethod
    def from_document(cls, data: dict[str, Any] | None) -> DeploymentState:
        """The stored document; fields and keys this code does not know (written by a newer one) are ignored."""
        data = data or {}
        return cls(**{name: _part(kind, data.get(name)) for name, kind in _PARTS.items()})


_PARTS = {
    "desired": Desired,
    "target": Target,
    "serving": Serving,
    "outbox": ProductionChanged,
    "refused": Refusal,
    "claim": Lease,
    "deploying": Lease,
    "rollout": Rollout,
}


# Fields added after documents were first stored: left out while unset, so those documents keep their shape.
# (A part left out is not cleared by an update, which is why a rollout, once recorded, is only ever replaced.)
_ADDED_LATER = frozenset({"announced_at", "rollout"})


def _part_document(part: Any) -> dict[str, Any]:
    if isinstance(part, Rollout):
        return part.to_document()
    return {k: v for k, v in dataclasses.asdict(part).items() if not (k in _ADDED_LATER and v is None)}


def _part(kind: type, value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    if kind is Rollout:
        return Rollout.from_document(value)
    names = {field.name for field in dataclasses.fields(kind)}
    return kind(**{key: item for key, item in value.items() if key in names})


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One decision in `deployments/{model}/history`: its kind, the version, when, and what explains it."""

    kind: HistoryKind
    version: str | None
    at: datetime
    trigger: str | None = None
    event_id: str | None = None
    message_id: str | None = None
    model_uri: str | None = None
    sha256: str | None = None
    reason: str | None = None
    detail: str | None = None
    error: str | None = None
    revision: str | None = None
    url: str | None = None
    kept: str | None = None  # with no_production_version: the version left in service

    def to_document(self) -> dict[str, Any]:
        """kind, version and at always; the other fields only where set."""
        fields = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        return {**fields, "kind": self.kind.value, "version": self.version}


ActionT = TypeVar("ActionT", bound=StrEnum)


@dataclasses.dataclass(frozen=True)
class Decision(Generic[ActionT]):
    """What one decision step chose: its action, the state to leave behind and the entries that record it.

    A decision that leaves the state as it found it and records nothing writes nothing.
    """

    action: ActionT
    state: DeploymentState
    history: tuple[HistoryEntry, ...] = ()
    detail: str = ""
    event_id: str | None = None  # the event the action concerns (published, republished)

    def writes(self, before: DeploymentState) -> bool:
        return self.state != before or bool(self.history)


def outbox_cleared(
    state: DeploymentState, event_id: str, message_id: str, now: datetime
) -> tuple[DeploymentState, tuple[HistoryEntry, ...]]:
    """The state once Pub/Sub confirmed event_id: its outbox emptied and a `published` entry; unchanged and
    unrecorded when the outbox holds no such event (another run confirmed it first)."""
    pending = state.outbox
    if pending is None or pending.event_id != event_id:
        return state, ()
    entry = HistoryEntry(HistoryKind.PUBLISHED, pending.model_version, now, event_id=event_id, message_id=message_id)
    return dataclasses.replace(state, outbox=None), (entry,)
