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
    VersionCounts,
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
    ROLLOUT_STARTED = "rollout_started"  # a new version staged beside the serving one, at the first step
    ROLLOUT_ADVANCED = "rollout_advanced"  # the candidate moved to the next step's share
    ROLLOUT_COMPLETED = "rollout_completed"  # the candidate takes all the traffic
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back"  # the policy sent all the traffic back to the stable version
    ROLLOUT_ABORTED = "rollout_aborted"  # a person (or a newer promotion) ended the rollout: stable keeps serving
    TRAFFIC = "traffic"  # the redeploy moved traffic between two live revisions (a candidate's share)
    REGISTRY_UPDATED = "registry_updated"  # after a rollout: the alias and the versions' tags tell the outcome


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
    promotion: str | None = None  # "automatic": training's AUTO_PROMOTE moved the alias; None: a person did


RELEASE_FIELDS = ("version", "run_id", "sha256", "model_uri", "event_id")


def release_of(source: Any) -> dict[str, str]:
    """The staged version's identity that an event, a target, what serves and a canary all carry (the version,
    its run, its file's sha256, its staged folder and the event that announced it), as keyword arguments."""
    if isinstance(source, ProductionChanged):
        return {
            "version": source.model_version,
            "run_id": source.mlflow_run_id,
            "sha256": source.sha256,
            "model_uri": source.model_uri,
            "event_id": source.event_id,
        }
    return {name: getattr(source, name) for name in RELEASE_FIELDS}


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
class Canary:
    """A rollout's candidate live beside the serving version, as the redeploy last applied it: its revision and
    its share of the traffic (the serving version has the rest)."""

    version: str
    run_id: str
    sha256: str
    model_uri: str
    event_id: str
    revision: str
    url: str  # the candidate's own URL (a Cloud Run tag): it can be called directly
    stable_revision: str  # the serving version's revision, which has the rest of the traffic
    percent: int
    applied_at: datetime


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
    # An ended rollout whose outcome the registry does not show yet (the alias moved back, the versions tagged):
    # the tick that ended it, or the next one after a crash, does it and sets this.
    registry_updated: bool = True
    # Both versions' counts in the rollout's first hour before it began (stable, candidate): the window counters
    # are hourly, so the evidence is what they hold now minus this.
    baseline: tuple[VersionCounts, VersionCounts] | None = None

    @property
    def in_progress(self) -> bool:
        return self.state is RolloutStatus.IN_PROGRESS

    @property
    def back_to_stable(self) -> bool:
        """Over, with the stable version keeping all the traffic (rolled back or aborted)."""
        return self.state in (RolloutStatus.ROLLED_BACK, RolloutStatus.ABORTED)

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
        decided = Rollout.of(decision.state, decision.percent)
        return dataclasses.replace(
            decided, last_decision=outcome, registry_updated=decided.in_progress, baseline=self.baseline
        )

    def ended(self, status: RolloutStatus, reason: Reason, detail: str, now: datetime) -> Rollout:
        """This rollout ended outside the policy (a newer promotion superseded it, say)."""
        completed = status is RolloutStatus.COMPLETED
        outcome = RolloutOutcome(RolloutAction.COMPLETE if completed else RolloutAction.ROLL_BACK, reason, detail, now)
        percent = 100 if completed else 0
        return dataclasses.replace(
            self,
            state=status,
            reason=reason,
            ended_at=now,
            candidate_percent=percent,
            last_decision=outcome,
            command=None,
            registry_updated=False,
        )

    def to_document(self) -> dict[str, Any]:
        return {
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)},
            "state": self.state.value,
            "reason": self.reason.value if self.reason else None,
            "last_decision": self.last_decision.to_document() if self.last_decision else None,
            "command": None
            if self.command is None
            else {"command": self.command.command.value, "at": self.command.at, "trigger": self.command.trigger},
            "baseline": None
            if self.baseline is None
            else {"stable": dataclasses.asdict(self.baseline[0]), "candidate": dataclasses.asdict(self.baseline[1])},
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
                registry_updated=bool(data.get("registry_updated", True)),
                baseline=(VersionCounts(**data["baseline"]["stable"]), VersionCounts(**data["baseline"]["candidate"]))
                if data.get("baseline")
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
    canary: Canary | None = None

    @property
    def versions_in_service(self) -> set[str]:
        """The versions taking traffic or about to: the serving one, the announced one, a rollout's candidate."""
        versions = {self.serving.version} if self.serving is not None else set()
        if self.target is not None:
            versions.add(self.target.version)
        if self.canary is not None:
            versions.add(self.canary.version)
        return versions

    @property
    def in_service(self) -> str | None:
        """The version announced for serving, else the one serving; None when there is neither."""
        if self.target is not None:
            return self.target.version
        return self.serving.version if self.serving is not None else None

    def to_document(self, before: DeploymentState | None = None) -> dict[str, Any]:
        """Every field, None where unset, so that an update clears what a decision cleared. A field added later
        is left out while unset, unless `before` (the state read) had it: then it is cleared too."""
        return {
            field.name: None if (part := getattr(self, field.name)) is None else _part_document(part)
            for field in dataclasses.fields(self)
            if not (
                field.name in _ADDED_LATER
                and getattr(self, field.name) is None
                and (before is None or getattr(before, field.name) is None)
            )
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
    "canary": Canary,
}


# Fields added after documents were first stored: left out while unset, so those documents keep their shape.
# An update leaves a part it does not name untouched, so one that the read state had is written as None to clear it.
_ADDED_LATER = frozenset({"announced_at", "rollout", "canary", "promotion"})


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
    stable_version: str | None = None  # with a rollout's entries and traffic moves: the version it replaces
    percent: int | None = None  # the candidate's share after the entry's decision
    checks: tuple[dict[str, Any], ...] | None = None  # a rollout decision's numbers (Check.to_document each)
    evaluation: dict[str, Any] | None = None  # with staged and refused: the watcher's own evaluation figures
    promotion: str | None = None  # with staged: "automatic" (training's AUTO_PROMOTE) or "manual" (a person)

    def to_document(self) -> dict[str, Any]:
        """kind, version and at always; the other fields only where set."""
        fields = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        if self.checks is not None:
            fields["checks"] = [dict(check) for check in self.checks]
        return {**fields, "kind": self.kind.value, "version": self.version}


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Who takes the traffic: `version` all of it, or the rest beside `candidate` at `percent`."""

    version: str
    candidate: str | None = None
    percent: int = 0


def wanted_traffic(state: DeploymentState) -> Traffic | None:
    """The traffic the document asks for: the rollout's split while it runs, else all on the announced version."""
    rollout, target = state.rollout, state.target
    if target is None:
        return None
    if rollout is not None and rollout.in_progress and rollout.candidate_version == target.version:
        return Traffic(rollout.stable_version, rollout.candidate_version, rollout.candidate_percent)
    return Traffic(target.version)


def applied_traffic(state: DeploymentState) -> Traffic | None:
    """The traffic the redeploy last put in place (None before the first deploy)."""
    serving, canary = state.serving, state.canary
    if serving is None:
        return None
    if canary is None:
        return Traffic(serving.version)
    return Traffic(serving.version, canary.version, canary.percent)


def traffic_settled(state: DeploymentState) -> bool:
    """What serves is what the document asks for (and, for a version serving alone, the announced files)."""
    wanted = wanted_traffic(state)
    if wanted is None or wanted != applied_traffic(state):
        return wanted is None
    if wanted.candidate is None:
        return state.serving.sha256 == state.target.sha256
    return state.canary.sha256 == state.target.sha256


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
    plan: Any = None  # the next effect to apply, when the action is a step that has one (the redeploy's move)

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
