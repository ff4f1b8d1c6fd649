"""What a reconcile tick decides, as a pure function: decide(state, evidence, policy, now) -> Decision.

No I/O and no clock in here: reconcile.py observes (the registry, the gate, staging, Pub/Sub), turns what it saw
into evidence, and commits each decision as one compare-and-swap. A tick is a chain of decisions:

    Looked (the registry's answer) -> CLAIM -> Staged -> PUBLISH -> Confirmed -> PUBLISHED
                                            -> Rejected -> REFUSED
                                            -> Abandoned (an error) -> RELEASED
                                   -> UP_TO_DATE | REPUBLISHED | REFUSED_EARLIER | IN_PROGRESS
                                      | NO_PRODUCTION_VERSION
                                   -> PUBLISH (the announced version still not serving: announced again)
                                   -> MEASURE (a rollout in progress) -> Measured (both versions' counts)
                                      -> ROLLOUT_HELD | PUBLISH (the candidate's share moved, or the rollout ended)
    Commanded (POST /rollout) -> COMMAND_RECORDED | NO_ROLLOUT | ABORT_PENDING
    RegistryUpdated (an ended rollout's alias and tags written) -> RECORDED

Before Staged or Rejected, judge_evaluation says whether the watcher's own evaluation of the candidate (its
accuracy on the evaluation set, beside the serving version's) lets it through; the figures go into the history.

A new kind of evidence is a new dataclass and a new branch of decide().
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum
from typing import Any

from sentiment_core import rollout as rollouts
from sentiment_core.deployments import (
    Decision,
    DeploymentState,
    Desired,
    HistoryEntry,
    HistoryKind,
    Lease,
    Refusal,
    Rollout,
    RolloutCommand,
    Target,
    outbox_cleared,
    release_of,
    traffic_settled,
)
from sentiment_core.records import window_hour
from sentiment_core.rollout import (
    Command,
    Reason,
    RolloutAction,
    RolloutEvidence,
    RolloutSettings,
    RolloutStatus,
    VersionCounts,
)

CLAIM_TTL_S = 300.0  # longer than a gate + staging of a large model; a crashed claimer blocks at most this long
# An announced version not serving this long after its event, with no deploy running, lost its event (a message
# dropped after its last delivery attempt, an emulator restarted): publish it again. Longer than a redeploy
# normally takes from event to serving, so a deploy on its way is not disturbed; the consumer is idempotent.
REANNOUNCE_AFTER_S = 120.0
# The quick test model scores about 0.90 on the default evaluation set, the default training run more; a model
# that answers the same for every text scores its majority class's share (0.60).
DEFAULT_MIN_EVAL_ACCURACY = 0.85
# On 2,000 examples two similar models disagree on about 5% of them: a difference of 0.02 is about four standard
# errors of the paired difference, so an equally good retrain is not refused by chance.
DEFAULT_MAX_EVAL_REGRESSION = 0.02


class Action(StrEnum):
    """A tick's answer (the `action` of `POST /`), or a step the tick still has to take."""

    UP_TO_DATE = "up_to_date"
    REPUBLISHED = "republished"  # up to date, after publishing an event an earlier run left in the outbox
    NO_PRODUCTION_VERSION = "no_production_version"
    REFUSED_EARLIER = "refused_earlier"
    IN_PROGRESS = "in_progress"
    REFUSED = "refused"
    PUBLISHED = "published"
    RELEASED = "released"  # the check failed with an error: claim given back, the error goes to the caller
    COMMAND_RECORDED = "command_recorded"  # POST /rollout: the next tick hands the command to the rollout policy
    NO_ROLLOUT = "no_rollout"  # POST /rollout with no rollout in progress
    ABORT_PENDING = "abort_pending"  # POST /rollout complete while an abort waits for its tick
    ROLLOUT_HELD = "rollout_held"  # the rollout policy keeps the candidate's share (the reason is in the rollout)
    TRAFFIC_PENDING = "traffic_pending"  # a new version waits until the last traffic change is applied
    RECORDED = "recorded"  # the registry shows an ended rollout's outcome, and the document says so
    CLAIM = "claim"  # step: check and stage the desired version under the claim just taken
    PUBLISH = "publish"  # step: publish the event just put in the outbox
    MEASURE = "measure"  # step: read both versions' counts for the rollout policy


@dataclasses.dataclass(frozen=True)
class EvalLimits:
    """MIN_EVAL_ACCURACY and MAX_EVAL_REGRESSION: what the candidate must score on the watcher's evaluation set."""

    min_accuracy: float = DEFAULT_MIN_EVAL_ACCURACY
    max_regression: float = DEFAULT_MAX_EVAL_REGRESSION


@dataclasses.dataclass(frozen=True)
class Policy:
    model_name: str
    claim_ttl_s: float = CLAIM_TTL_S
    reannounce_after_s: float = REANNOUNCE_AFTER_S
    rollout: RolloutSettings = dataclasses.field(default_factory=RolloutSettings)
    evaluation: EvalLimits = dataclasses.field(default_factory=EvalLimits)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The watcher's own figures: the candidate's accuracy on its evaluation set (n examples, the set's sha256)
    and the serving version's on the same set by the same code (None, with a note, when it could not be scored)."""

    eval_set_sha256: str
    n: int
    candidate_accuracy: float
    serving_version: str | None = None
    serving_accuracy: float | None = None
    serving_note: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The history entry's `evaluation` field: the fields that are set."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


def judge_evaluation(evaluation: Evaluation, limits: EvalLimits) -> tuple[str, str] | None:
    """None when the figures let the candidate through, else (reason, detail) for the refusal.

    Below the minimum: refused whatever serves. More than the allowed regression below the serving version:
    refused (a serving version without a score is not compared: only the minimum holds).
    """
    got, n = evaluation.candidate_accuracy, evaluation.n
    if not got >= limits.min_accuracy:  # NaN refuses too
        return (
            "eval_accuracy_below_minimum",
            f"accuracy {got:.4f} on the watcher's evaluation set (n={n}) < minimum {limits.min_accuracy:.4f}",
        )
    serving = evaluation.serving_accuracy
    if serving is not None and evaluation.serving_version is not None and got < serving - limits.max_regression:
        return (
            "eval_accuracy_regression",
            f"accuracy {got:.4f} on the watcher's evaluation set (n={n}) is {serving - got:.4f} below version "
            f"{evaluation.serving_version}'s {serving:.4f} (at most {limits.max_regression:.4f} allowed)",
        )
    return None


@dataclasses.dataclass(frozen=True)
class Looked:
    """The registry's production version (None: there is none) and why the tick runs."""

    desired: Desired | None
    trigger: str
    claimant: str  # this tick's id: the owner of any claim it takes
    retry_refused: str | None = None  # a version promoted again: a past refusal of it no longer holds
    republished: str | None = None  # the event id this tick published from the outbox first, if any


@dataclasses.dataclass(frozen=True)
class Staged:
    """The gate accepted the claimed version and its files are staged at model_uri."""

    claimant: str
    desired: Desired
    sha256: str
    model_uri: str
    event_id: str  # the id of the event to announce
    trigger: str
    # The serving and the staged version's counts in the current hour, read before staging (None: no rollout
    # would start), and when they were read.
    baseline: tuple[VersionCounts, VersionCounts] | None = None
    baseline_at: datetime | None = None
    evaluation: Evaluation | None = None  # the watcher's own figures, for the history


@dataclasses.dataclass(frozen=True)
class Rejected:
    """The gate (or staging) refused the claimed version."""

    claimant: str
    version: str
    reason: str
    detail: str
    trigger: str
    evaluation: Evaluation | None = None  # the watcher's own figures, when the refusal is on them


@dataclasses.dataclass(frozen=True)
class Abandoned:
    """Checking or staging the claimed version failed with an error."""

    claimant: str


@dataclasses.dataclass(frozen=True)
class Confirmed:
    """Pub/Sub confirmed the event."""

    event_id: str
    message_id: str


@dataclasses.dataclass(frozen=True)
class Commanded:
    """A person asked to abort or complete the rollout in progress."""

    command: Command
    trigger: str


@dataclasses.dataclass(frozen=True)
class Measured:
    """Both versions' counts over the rollout's window, and the registry's production version on this tick."""

    stable: VersionCounts
    candidate: VersionCounts
    desired_version: str | None  # the stable version here means a person moved the alias back: an abort
    trigger: str


@dataclasses.dataclass(frozen=True)
class RegistryUpdated:
    """The alias and the tags now tell the outcome of the rollout of candidate_version begun at started_at."""

    candidate_version: str
    started_at: datetime
    detail: str


Evidence = Looked | Staged | Rejected | Abandoned | Confirmed | Commanded | Measured | RegistryUpdated


def decide(state: DeploymentState, evidence: Evidence, policy: Policy, now: datetime) -> Decision[Action]:
    """What the tick does next given what it saw, and what it writes."""
    match evidence:
        case Looked():
            return _looked(state, evidence, policy, now)
        case Staged():
            return _staged(state, evidence, policy, now)
        case Rejected():
            return _rejected(state, evidence, now)
        case Abandoned():
            if not _holds_claim(state, evidence.claimant):
                return Decision(Action.RELEASED, state)
            return Decision(Action.RELEASED, dataclasses.replace(state, claim=None))
        case Confirmed():
            cleared, history = outbox_cleared(state, evidence.event_id, evidence.message_id, now)
            return Decision(Action.PUBLISHED, cleared, history, event_id=evidence.event_id)
        case Commanded():
            return _commanded(state, evidence, now)
        case Measured():
            return _measured(state, evidence, policy, now)
        case RegistryUpdated():
            return _registry_updated(state, evidence, now)
    raise TypeError(f"no decision for {evidence!r}")


def _looked(state: DeploymentState, seen: Looked, policy: Policy, now: datetime) -> Decision[Action]:
    rollout = state.rollout
    rolling = rollout is not None and rollout.in_progress and _announces(state, rollout.candidate_version)
    if rolling and (
        seen.desired is None or seen.desired.version in (rollout.stable_version, rollout.candidate_version)
    ):
        # The policy decides, with what the registry says as evidence: the stable version (or none) is an abort.
        new = (
            state
            if seen.desired is None or state.desired == seen.desired
            else dataclasses.replace(state, desired=seen.desired)
        )
        return Decision(Action.MEASURE, new)
    if seen.desired is None:
        return _no_production_version(state, seen, policy, now)
    desired = seen.desired
    new = state if state.desired == desired else dataclasses.replace(state, desired=desired)
    refused = new.refused
    if refused and (refused.version != desired.version or seen.retry_refused == desired.version):
        new = dataclasses.replace(new, refused=None)  # promoting again, or another version, starts over
    if rolling:
        return _superseded(new, desired, policy, now)
    if new.target is not None and new.target.version == desired.version:
        if seen.republished:
            return Decision(Action.REPUBLISHED, new, event_id=seen.republished)
        if _lost_its_event(new, policy, now):
            return _reannounce(new, policy, now)
        return Decision(Action.UP_TO_DATE, new)
    if new.refused is not None:
        return Decision(Action.REFUSED_EARLIER, new, detail=f"{new.refused.reason}: {new.refused.detail}")
    if new.canary is not None:
        # Two revisions are live (a rollout ending): a new rollout starts from one serving version, so the new
        # version is checked once the last traffic change is applied. An event lost meanwhile is announced again.
        if _lost_its_event(new, policy, now):
            return _reannounce(new, policy, now)
        detail = f"version {new.canary.version} is still live beside version {new.serving.version}"
        return Decision(Action.TRAFFIC_PENDING, new, detail=f"{detail}; version {desired.version} waits")
    if new.claim is not None and new.claim.active(now):
        # The document is the claimer's until it announces: write nothing, not even the desired version.
        return Decision(Action.IN_PROGRESS, state, detail=f"another run is staging version {new.claim.key}")
    claim = Lease.take(desired.version, seen.claimant, now, policy.claim_ttl_s)
    return Decision(Action.CLAIM, dataclasses.replace(new, claim=claim))


def _announces(state: DeploymentState, version: str) -> bool:
    return state.target is not None and state.target.version == version


def _superseded(state: DeploymentState, desired: Desired, policy: Policy, now: datetime) -> Decision[Action]:
    """Another version promoted during a rollout: the rollout ends (`superseded`), the stable version is
    announced again so the candidate is drained, and the new version is checked once it is."""
    rollout = state.rollout
    detail = f"version {desired.version} was promoted during the rollout of version {rollout.candidate_version}"
    ended = rollout.ended(RolloutStatus.ABORTED, Reason.SUPERSEDED, detail, now)
    entry = _rollout_entry(HistoryKind.ROLLOUT_ABORTED, ended, Reason.SUPERSEDED, 0, detail, (), now)
    return _announce_stable(dataclasses.replace(state, rollout=ended), rollout, entry, policy, now)


def _lost_its_event(state: DeploymentState, policy: Policy, now: datetime) -> bool:
    """What serves is not what is announced, nothing is on its way, and the last event is old enough to be lost."""
    target, deploying = state.target, state.deploying
    if target is None or state.outbox is not None or (deploying is not None and deploying.active(now)):
        return False
    if traffic_settled(state):
        return False
    return (now - target.last_announced).total_seconds() >= policy.reannounce_after_s


def _reannounce(state: DeploymentState, policy: Policy, now: datetime) -> Decision[Action]:
    """The target's event, with its own id, back in the outbox: the consumer deploys it once."""
    target = state.target
    serving = state.serving.version if state.serving is not None else None
    event = target.event(policy.model_name, serving)
    detail = f"version {target.version} was announced but {f'version {serving}' if serving else 'nothing'} serves"
    entry = HistoryEntry(HistoryKind.REANNOUNCED, target.version, now, event_id=target.event_id, detail=detail)
    announced = dataclasses.replace(state, target=dataclasses.replace(target, announced_at=now), outbox=event)
    return Decision(Action.PUBLISH, announced, (entry,), detail, event_id=target.event_id)


def _no_production_version(state: DeploymentState, seen: Looked, policy: Policy, now: datetime) -> Decision[Action]:
    kept = state.in_service
    detail = f"no version of {policy.model_name} has alias production or stage Production; " + (
        f"keeping version {kept} in service" if kept else "no version is in service"
    )
    if state.desired is None and state.refused is None:
        return Decision(Action.NO_PRODUCTION_VERSION, state, detail=detail)  # said once, not on every tick
    entry = HistoryEntry(
        HistoryKind.NO_PRODUCTION_VERSION,
        None,
        now,
        trigger=seen.trigger,
        kept=state.target.version if state.target else None,
    )
    return Decision(
        Action.NO_PRODUCTION_VERSION, dataclasses.replace(state, desired=None, refused=None), (entry,), detail
    )


def _staged(state: DeploymentState, staged: Staged, policy: Policy, now: datetime) -> Decision[Action]:
    if not _holds_claim(state, staged.claimant):
        # The claim expired and another run took over: it announces, not us.
        return Decision(Action.IN_PROGRESS, state, detail="the claim on this version expired")
    desired = staged.desired
    target = Target(
        version=desired.version,
        run_id=desired.run_id,
        sha256=staged.sha256,
        model_uri=staged.model_uri,
        event_id=staged.event_id,
        staged_at=now,
    )
    event = target.event(policy.model_name, state.in_service)
    entry = HistoryEntry(
        HistoryKind.STAGED,
        desired.version,
        now,
        trigger=staged.trigger,
        model_uri=staged.model_uri,
        sha256=staged.sha256,
        event_id=staged.event_id,
        evaluation=staged.evaluation.to_document() if staged.evaluation else None,
        promotion=desired.promotion or "manual",
    )
    announced = dataclasses.replace(state, target=target, outbox=event, claim=None)
    started = _start_rollout(announced, policy.rollout, now, _baseline(staged, now))
    history = (entry,) if started is None else (entry, started[1])
    if started is not None:
        announced = dataclasses.replace(announced, rollout=started[0])
    return Decision(Action.PUBLISH, announced, history, event_id=staged.event_id)


def _baseline(staged: Staged, now: datetime) -> tuple[VersionCounts, VersionCounts] | None:
    """The staged counts if they are of the hour the rollout begins in (its first window counter)."""
    if staged.baseline is None or staged.baseline_at is None or window_hour(staged.baseline_at) != window_hour(now):
        return None
    return staged.baseline


def _start_rollout(
    state: DeploymentState,
    settings: RolloutSettings,
    now: datetime,
    baseline: tuple[VersionCounts, VersionCounts] | None = None,
) -> tuple[Rollout, HistoryEntry] | None:
    """A rollout of the newly announced version beside the serving one at the first step; none for a first
    deployment (nothing to compare with) or the version that already serves. ROLLOUT_STEPS=100: the rollout is
    over as it starts (the redeploy switches at once), and only its tags remain to write."""
    serving, target = state.serving, state.target
    if serving is None or serving.version == target.version:
        return None
    started = Rollout.of(rollouts.start(serving.version, target.version, now), settings.steps[0])
    if baseline is not None and (baseline[0].version, baseline[1].version) == (serving.version, target.version):
        started = dataclasses.replace(started, baseline=baseline)
    detail = (
        f"version {target.version} gets {started.candidate_percent}% of the traffic, version {serving.version} the rest"
    )
    if started.candidate_percent == 100:
        detail = f"ROLLOUT_STEPS is 100: version {target.version} takes all the traffic at once"
        started = started.ended(RolloutStatus.COMPLETED, Reason.IMMEDIATE, detail, now)
    entry = _rollout_entry(HistoryKind.ROLLOUT_STARTED, started, None, started.candidate_percent, detail, (), now)
    return started, entry


def _rollout_entry(
    kind: HistoryKind,
    rollout: Rollout,
    reason: Reason | None,
    percent: int,
    detail: str,
    checks: tuple[rollouts.Check, ...],
    now: datetime,
    trigger: str | None = None,
) -> HistoryEntry:
    return HistoryEntry(
        kind,
        rollout.candidate_version,
        now,
        trigger=trigger,
        reason=reason.value if reason else None,
        detail=detail,
        stable_version=rollout.stable_version,
        percent=percent,
        checks=tuple(check.to_document() for check in checks) or None,
    )


# The history entry of each decision that changes the traffic (holding records nothing but the rollout's numbers).
_ROLLOUT_KINDS = {
    RolloutStatus.COMPLETED: HistoryKind.ROLLOUT_COMPLETED,
    RolloutStatus.ROLLED_BACK: HistoryKind.ROLLOUT_ROLLED_BACK,
    RolloutStatus.ABORTED: HistoryKind.ROLLOUT_ABORTED,
}


def _measured(state: DeploymentState, measured: Measured, policy: Policy, now: datetime) -> Decision[Action]:
    """The rollout policy on this tick's evidence, and its decision's effects on what is announced."""
    rollout = state.rollout
    versions = (measured.stable.version, measured.candidate.version)
    if rollout is None or not rollout.in_progress or versions != (rollout.stable_version, rollout.candidate_version):
        return Decision(Action.UP_TO_DATE, state, detail="the rollout changed while its evidence was read")
    command, trigger = (rollout.command.command, rollout.command.trigger) if rollout.command else (None, None)
    if measured.desired_version == rollout.stable_version:
        command, trigger = Command.ABORT, f"{measured.trigger}: alias {rollout.stable_version} promoted back"
    elif measured.desired_version is None:
        command, trigger = Command.ABORT, f"{measured.trigger}: no version has the alias production"
    stable, candidate = (
        (measured.stable, measured.candidate)
        if rollout.baseline is None
        else (measured.stable.since(rollout.baseline[0]), measured.candidate.since(rollout.baseline[1]))
    )
    evidence = RolloutEvidence(stable, candidate, traffic_settled(state), command)
    decision = rollouts.decide(rollout.policy_state(), evidence, policy.rollout, now)
    after = rollout.decided(decision, now)
    new = dataclasses.replace(state, rollout=after)
    detail = decision.detail or decision.reason.value
    if decision.action is RolloutAction.HOLD:
        if _lost_its_event(new, policy, now):
            return _reannounce(new, policy, now)
        return Decision(Action.ROLLOUT_HELD, new, detail=detail)
    kind = HistoryKind.ROLLOUT_ADVANCED if after.in_progress else _ROLLOUT_KINDS[after.state]
    entry = _rollout_entry(kind, after, decision.reason, decision.percent, detail, decision.checks, now, trigger)
    if after.back_to_stable:
        return _announce_stable(new, rollout, entry, policy, now)
    event = new.target.event(policy.model_name, rollout.stable_version)
    announced = dataclasses.replace(new, target=dataclasses.replace(new.target, announced_at=now), outbox=event)
    return Decision(Action.PUBLISH, announced, (entry,), detail, event_id=event.event_id)


def _announce_stable(
    state: DeploymentState, rollout: Rollout, entry: HistoryEntry, policy: Policy, now: datetime
) -> Decision[Action]:
    """What serves announced again, with the event that deployed it: the redeploy gives its revision all the
    traffic back and drains the candidate. (A rollout starts only beside a serving version, and a new one only
    once the last one's traffic is applied, so what serves is the rollout's stable version.)"""
    serving = state.serving
    target = Target(**release_of(serving), staged_at=serving.deployed_at, announced_at=now)
    event = target.event(policy.model_name, rollout.candidate_version)
    announced = dataclasses.replace(state, target=target, outbox=event)
    return Decision(Action.PUBLISH, announced, (entry,), entry.detail or "", event_id=event.event_id)


def _registry_updated(state: DeploymentState, updated: RegistryUpdated, now: datetime) -> Decision[Action]:
    rollout = state.rollout
    if (
        rollout is None
        or rollout.registry_updated
        or (rollout.candidate_version, rollout.started_at) != (updated.candidate_version, updated.started_at)
    ):
        return Decision(Action.RECORDED, state)  # another run recorded it, or a new rollout began since
    entry = HistoryEntry(HistoryKind.REGISTRY_UPDATED, rollout.candidate_version, now, detail=updated.detail)
    recorded = dataclasses.replace(state, rollout=dataclasses.replace(rollout, registry_updated=True))
    return Decision(Action.RECORDED, recorded, (entry,), updated.detail)


def _rejected(state: DeploymentState, rejected: Rejected, now: datetime) -> Decision[Action]:
    detail = f"{rejected.reason}: {rejected.detail}"
    if not _holds_claim(state, rejected.claimant):
        return Decision(Action.REFUSED, state, detail=detail)
    refusal = Refusal(version=rejected.version, reason=rejected.reason, detail=rejected.detail, at=now)
    entry = HistoryEntry(
        HistoryKind.REFUSED,
        rejected.version,
        now,
        trigger=rejected.trigger,
        reason=rejected.reason,
        detail=rejected.detail,
        evaluation=rejected.evaluation.to_document() if rejected.evaluation else None,
    )
    return Decision(Action.REFUSED, dataclasses.replace(state, refused=refusal, claim=None), (entry,), detail)


def _holds_claim(state: DeploymentState, claimant: str) -> bool:
    return state.claim is not None and state.claim.owner == claimant


def _commanded(state: DeploymentState, asked: Commanded, now: datetime) -> Decision[Action]:
    """Record a person's command on the rollout in progress, for the next tick to hand to the rollout policy."""
    rollout = state.rollout
    if rollout is None or not rollout.in_progress:
        over = f" (the last one, of version {rollout.candidate_version}, is {rollout.state.value})" if rollout else ""
        return Decision(Action.NO_ROLLOUT, state, detail=f"no rollout is in progress{over}")
    pending = rollout.command
    if pending is not None and pending.command is asked.command:
        detail = f"{asked.command.value} was requested already at {pending.at.isoformat()}; the next tick applies it"
        return Decision(Action.COMMAND_RECORDED, state, detail=detail)  # a retried request: nothing new to write
    if pending is not None and pending.command is Command.ABORT:
        # Aborting is the safe direction: a later "complete" never overrides it (an abort may override a complete).
        return Decision(
            Action.ABORT_PENDING, state, detail=f"an abort requested at {pending.at.isoformat()} is pending"
        )
    detail = f"{asked.command.value} of the rollout of version {rollout.candidate_version} requested"
    detail += "; the next tick applies it"
    entry = HistoryEntry(
        HistoryKind.ROLLOUT_COMMAND,
        rollout.candidate_version,
        now,
        trigger=asked.trigger,
        reason=asked.command.value,
        detail=detail,
    )
    commanded = dataclasses.replace(rollout, command=RolloutCommand(asked.command, now, asked.trigger))
    return Decision(Action.COMMAND_RECORDED, dataclasses.replace(state, rollout=commanded), (entry,), detail)
