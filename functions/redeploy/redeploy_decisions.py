"""What the redeploy decides about one event, as a pure function: decide(state, evidence, policy, now) -> Decision.

No I/O and no clock in here: redeploy.py reads the deployment document, runs the deployer, and commits each
decision as one compare-and-swap.

    Delivered -> DEPLOY (the deploy lease taken, a Plan) -> Succeeded -> DEPLOYED | ROLLED_BACK | TRAFFIC_MOVED
                                                         -> Failed -> FAILED (Pub/Sub delivers the event again)
              -> ALREADY_SERVING | SUPERSEDED | IN_PROGRESS | OTHER_MODEL (acknowledged, nothing deployed)
              -> REFUSED (its model_uri is not its version's folder in the serving bucket: acknowledged, recorded)
              -> BUSY (another event's deploy runs: not acknowledged, so Pub/Sub delivers it again later)
    Continued (after a move, the same delivery looks again) -> DEPLOY (the next move) | ALREADY_SERVING | IN_PROGRESS

The event only wakes the redeploy: what to put in front of traffic is read from the deployment document
(`wanted_traffic`: the announced version alone, or a rollout's split) and compared with what the redeploy last
applied (`applied_traffic`). `next_move` is the one step that brings them closer; redeploy.py applies moves until
they agree, so a step the watcher decided while a deploy ran is applied by the same delivery.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime
from enum import StrEnum

from sentiment_core.deployments import (
    Canary,
    Decision,
    DeploymentState,
    HistoryEntry,
    HistoryKind,
    Lease,
    Serving,
    Traffic,
    release_of,
    traffic_settled,
    wanted_traffic,
)
from sentiment_core.events import ProductionChanged, staged_in, staged_uri

DEPLOY_LEASE_S = 900.0  # the function's timeout (540 s) plus margin: a crashed deploy blocks at most this long


class Action(StrEnum):
    """What the redeploy did with an event, or the step it still has to take."""

    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"  # deployed, and the new version is older than the one it replaced
    TRAFFIC_MOVED = "traffic_moved"  # a rollout's candidate deployed, its share moved, or the candidate drained
    FAILED = "failed"
    ALREADY_SERVING = "already_serving"  # a redelivery or a duplicate
    SUPERSEDED = "superseded"  # a newer event has been announced since
    IN_PROGRESS = "in_progress"  # another delivery of this event holds the deploy lease
    BUSY = "busy"  # another event's deploy holds the lease: two updates of one service must not overlap
    OTHER_MODEL = "other_model"
    REFUSED = "refused"  # the event (or the version the document announces) is not staged where it must be
    DEPLOY = "deploy"  # step: deploy under the lease just taken


# The history's reason code for a refused event: docs/promotion.md.
URI_NOT_ALLOWED = "model_uri_not_allowed"


@dataclasses.dataclass(frozen=True)
class Policy:
    """model_name: the model this redeploy serves; serving_bucket: the only bucket a version is deployed from
    (SERVING_BUCKET), each version from its own folder, `gs://<serving_bucket>/<model>/v<version>`."""

    model_name: str
    serving_bucket: str
    lease_s: float = DEPLOY_LEASE_S


class Move(StrEnum):
    """One change of what serves."""

    DEPLOY = "deploy"  # the announced version takes all the traffic on a new revision; others drained
    CANDIDATE = "candidate"  # the rollout's candidate on a new revision beside the serving one, at its share
    SPLIT = "split"  # the candidate's share moved
    COMPLETE = "complete"  # the candidate takes all the traffic; the serving revision drained
    ROLL_BACK = "roll_back"  # the serving revision takes all the traffic back; the candidate drained
    DRAIN = "drain"  # a candidate revision live on the service that the document does not know: drained


@dataclasses.dataclass(frozen=True)
class Plan:
    """The next move, with what applying it needs: the announced version's event (what DEPLOY and CANDIDATE
    start), the candidate's share, and the two live revisions when there are two."""

    move: Move
    event: ProductionChanged
    percent: int = 0
    stable_revision: str | None = None
    candidate_revision: str | None = None


def next_move(state: DeploymentState, event: ProductionChanged, model_name: str) -> Plan:
    """The one move that brings what serves closer to `wanted_traffic(state)` (the state is not settled).

    `event` is the delivered one, used only when the document announces nothing (documents written before
    targets existed); otherwise the announced version's own event is what a new revision starts from.
    """
    target, serving, canary = state.target, state.serving, state.canary
    wanted = wanted_traffic(state) or Traffic(event.model_version)
    if target is not None:
        event = target.event(model_name, serving.version if serving else None)
    if canary is not None:
        revisions = {"stable_revision": canary.stable_revision, "candidate_revision": canary.revision}
        if wanted.candidate == canary.version:
            return Plan(Move.SPLIT, event, wanted.percent, **revisions)
        if wanted.candidate is None and wanted.version == canary.version and canary.sha256 == event.sha256:
            return Plan(Move.COMPLETE, event, canary.percent, **revisions)
        return Plan(Move.ROLL_BACK, event, canary.percent, **revisions)  # then, if needed, the next version
    if wanted.candidate is not None and serving is not None:
        return Plan(Move.CANDIDATE, event, wanted.percent)
    return Plan(Move.DEPLOY, event)


@dataclasses.dataclass(frozen=True)
class Live:
    """Two revisions the service reports sharing the traffic (Deployer.current_split)."""

    stable_revision: str
    candidate_revision: str
    percent: int


@dataclasses.dataclass(frozen=True)
class Delivered:
    """Pub/Sub delivered the event to this instance, which looked at the service first."""

    event: ProductionChanged
    deployer: str  # this delivery's id: the owner of the lease it takes
    live: Live | None = None  # a split in place on the service, if any


@dataclasses.dataclass(frozen=True)
class Succeeded:
    """The move is in place: for DEPLOY the new revision serves the event's version (the default move)."""

    event: ProductionChanged
    deployer: str
    revision: str  # the revision that took traffic (the candidate's, or the one left with all of it)
    url: str
    plan: Plan | None = None  # None: a DEPLOY of `event`
    stable_revision: str | None = None  # with CANDIDATE: the revision it was deployed beside


@dataclasses.dataclass(frozen=True)
class Failed:
    """The deploy failed; the old version still serves."""

    event: ProductionChanged
    deployer: str
    error: str


@dataclasses.dataclass(frozen=True)
class Continued:
    """A delivery that applied a move looks at the document again: whatever was decided meanwhile (a rollback
    announced with another event, say) is its to apply, whichever event woke it."""

    deployer: str


Evidence = Delivered | Succeeded | Failed | Continued


def decide(state: DeploymentState, evidence: Evidence, policy: Policy, now: datetime) -> Decision[Action]:
    """What the redeploy does next given what it saw, and what it writes."""
    match evidence:
        case Delivered():
            return _delivered(state, evidence, policy, now)
        case Succeeded():
            return _succeeded(state, evidence, now)
        case Continued():
            return _continued(state, evidence, policy, now)
        case Failed():
            entry = HistoryEntry(
                HistoryKind.FAILED,
                evidence.event.model_version,
                now,
                event_id=evidence.event.event_id,
                error=evidence.error,
            )
            return Decision(Action.FAILED, _released(state, evidence.deployer), (entry,), evidence.error)
    raise TypeError(f"no decision for {evidence!r}")


def _delivered(state: DeploymentState, delivered: Delivered, policy: Policy, now: datetime) -> Decision[Action]:
    event = delivered.event
    if event.model_name != policy.model_name:
        return Decision(Action.OTHER_MODEL, state, detail=f"this redeploy serves {policy.model_name}")
    if not staged_in(event, policy.serving_bucket):
        # Before the lease and the document: an event anyone could have planted deploys nothing and holds up
        # nobody. Acknowledged (retrying cannot make it acceptable) and recorded for the operator.
        return _refused(state, event, policy, now)
    deploying = state.deploying
    if deploying is not None and deploying.active(now):
        # Before anything else: while a deploy runs, the document does not yet show what it is putting in
        # place, so "already serving" could not be trusted. Its holder looks again once its move is done.
        if deploying.key == event.event_id:
            return Decision(Action.IN_PROGRESS, state)
        return Decision(Action.BUSY, state, detail=f"the deploy of event {deploying.key} is still running")
    live, canary = delivered.live, state.canary
    if live is not None and (canary is None or canary.revision != live.candidate_revision):
        # A crash between a candidate's deploy and its record leaves it serving its share with nobody watching.
        lease = Lease.take(event.event_id, delivered.deployer, now, policy.lease_s)
        plan = Plan(Move.DRAIN, event, live.percent, live.stable_revision, live.candidate_revision)
        return Decision(Action.DEPLOY, dataclasses.replace(state, deploying=lease), detail=plan.move.value, plan=plan)
    serving, target = state.serving, state.target
    serves_it = serving is not None and (serving.version, serving.sha256) == (event.model_version, event.sha256)
    if target is not None and target.event_id != event.event_id:
        if serves_it:
            return Decision(Action.ALREADY_SERVING, state)
        return Decision(Action.SUPERSEDED, state, detail=f"version {target.version} was announced since")
    if (target is None and serves_it) or (target is not None and traffic_settled(state)):
        return Decision(Action.ALREADY_SERVING, state)
    return _take_lease(state, event, delivered.deployer, policy, now)


def _continued(state: DeploymentState, continued: Continued, policy: Policy, now: datetime) -> Decision[Action]:
    deploying, target = state.deploying, state.target
    if target is None or traffic_settled(state):
        return Decision(Action.ALREADY_SERVING, state)
    if deploying is not None and deploying.active(now) and deploying.owner != continued.deployer:
        return Decision(Action.IN_PROGRESS, state, detail=f"the deploy of event {deploying.key} is running")
    event = target.event(policy.model_name, state.serving.version if state.serving else None)
    return _take_lease(state, event, continued.deployer, policy, now)


def _take_lease(
    state: DeploymentState, event: ProductionChanged, deployer: str, policy: Policy, now: datetime
) -> Decision[Action]:
    plan = next_move(state, event, policy.model_name)
    if plan.move in (Move.DEPLOY, Move.CANDIDATE) and not staged_in(plan.event, policy.serving_bucket):
        # The version the document announces is what a new revision starts from, whichever event woke us: it
        # is checked too, so a target written into the document by someone other than the watcher serves nothing.
        return _refused(state, plan.event, policy, now)
    lease = Lease.take(event.event_id, deployer, now, policy.lease_s)
    return Decision(Action.DEPLOY, dataclasses.replace(state, deploying=lease), detail=plan.move.value, plan=plan)


def _refused(state: DeploymentState, event: ProductionChanged, policy: Policy, now: datetime) -> Decision[Action]:
    expected = staged_uri(policy.serving_bucket, event.model_name, event.model_version)
    detail = f"model_uri {event.model_uri!r} is not {expected!r}: version {event.model_version} deploys nothing"
    entry = HistoryEntry(
        HistoryKind.REFUSED,
        event.model_version,
        now,
        trigger="redeploy",
        event_id=event.event_id,
        model_uri=event.model_uri,
        sha256=event.sha256,
        reason=URI_NOT_ALLOWED,
        detail=detail,
    )
    return Decision(Action.REFUSED, state, (entry,), detail, event_id=event.event_id)


def _succeeded(state: DeploymentState, succeeded: Succeeded, now: datetime) -> Decision[Action]:
    plan = succeeded.plan
    if plan is not None and plan.move is not Move.DEPLOY:
        return _traffic_moved(_released(state, succeeded.deployer), succeeded, plan, now)
    event = succeeded.event
    replaced = state.serving.version if state.serving is not None else None
    older = replaced is not None and int(replaced) > int(event.model_version)
    action, kind = (Action.ROLLED_BACK, HistoryKind.ROLLED_BACK) if older else (Action.DEPLOYED, HistoryKind.DEPLOYED)
    serving = Serving(**release_of(event), deployed_at=now, revision=succeeded.revision, url=succeeded.url)
    entry = HistoryEntry(
        kind, event.model_version, now, event_id=event.event_id, revision=succeeded.revision, url=succeeded.url
    )
    deployed = dataclasses.replace(_released(state, succeeded.deployer), serving=serving, canary=None)
    return Decision(action, deployed, (entry,))


def _traffic_moved(state: DeploymentState, succeeded: Succeeded, plan: Plan, now: datetime) -> Decision[Action]:
    """A rollout's move is in place: the canary recorded, moved, promoted to serving, or gone."""
    event, serving, canary = plan.event, state.serving, state.canary
    stable = serving.version if serving is not None else None
    entry = functools.partial(
        HistoryEntry, at=now, event_id=event.event_id, revision=succeeded.revision, url=succeeded.url or None
    )
    match plan.move:
        case Move.CANDIDATE:
            canary = Canary(
                **release_of(event),
                revision=succeeded.revision,
                url=succeeded.url,
                stable_revision=succeeded.stable_revision or "",
                percent=plan.percent,
                applied_at=now,
            )
            detail = f"version {canary.version} deployed beside version {stable} with {plan.percent}% of the traffic"
            moved = dataclasses.replace(state, canary=canary)
            record = entry(HistoryKind.TRAFFIC, canary.version, stable_version=stable, percent=plan.percent)
        case Move.SPLIT:
            moved = dataclasses.replace(state, canary=dataclasses.replace(canary, percent=plan.percent, applied_at=now))
            detail = f"version {canary.version} now has {plan.percent}% of the traffic, version {stable} the rest"
            record = entry(HistoryKind.TRAFFIC, canary.version, stable_version=stable, percent=plan.percent)
        case Move.COMPLETE:
            promoted = Serving(**release_of(canary), deployed_at=now, revision=canary.revision, url=succeeded.url)
            moved = dataclasses.replace(state, serving=promoted, canary=None)
            detail = f"version {canary.version} takes all the traffic; version {stable} drained"
            record = entry(HistoryKind.DEPLOYED, canary.version, stable_version=stable, percent=100)
        case Move.DRAIN:
            moved = dataclasses.replace(state, canary=None)
            detail = f"revision {plan.candidate_revision} had {plan.percent}% of the traffic and no record: drained"
            record = HistoryEntry(
                HistoryKind.TRAFFIC, None, now, revision=plan.candidate_revision, stable_version=stable, percent=0
            )
        case _:  # ROLL_BACK
            moved = dataclasses.replace(state, canary=None)
            detail = f"version {stable} takes all the traffic back; version {canary.version} drained"
            record = entry(HistoryKind.TRAFFIC, canary.version, stable_version=stable, percent=0)
    return Decision(Action.TRAFFIC_MOVED, moved, (dataclasses.replace(record, detail=detail),), detail)


def _released(state: DeploymentState, deployer: str) -> DeploymentState:
    """The deploy lease given back, if it is still this delivery's (it may have expired and been taken since)."""
    if state.deploying is not None and state.deploying.owner == deployer:
        return dataclasses.replace(state, deploying=None)
    return state
