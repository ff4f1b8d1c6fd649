"""What the redeploy decides about one event, as a pure function: decide(state, evidence, policy, now) -> Decision.

No I/O and no clock in here: redeploy.py reads the deployment document, runs the deployer, and commits each
decision as one compare-and-swap.

    Delivered -> DEPLOY (the deploy lease taken) -> Succeeded -> DEPLOYED | ROLLED_BACK
                                                 -> Failed -> FAILED (Pub/Sub delivers the event again)
              -> ALREADY_SERVING | SUPERSEDED | IN_PROGRESS | OTHER_MODEL (acknowledged, nothing deployed)
              -> BUSY (another event's deploy runs: not acknowledged, so Pub/Sub delivers it again later)
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum

from sentiment_core.deployments import Decision, DeploymentState, HistoryEntry, HistoryKind, Lease, Serving
from sentiment_core.events import ProductionChanged

DEPLOY_LEASE_S = 900.0  # the function's timeout (540 s) plus margin: a crashed deploy blocks at most this long


class Action(StrEnum):
    """What the redeploy did with an event, or the step it still has to take."""

    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"  # deployed, and the new version is older than the one it replaced
    FAILED = "failed"
    ALREADY_SERVING = "already_serving"  # a redelivery or a duplicate
    SUPERSEDED = "superseded"  # a newer event has been announced since
    IN_PROGRESS = "in_progress"  # another delivery of this event holds the deploy lease
    BUSY = "busy"  # another event's deploy holds the lease: two updates of one service must not overlap
    OTHER_MODEL = "other_model"
    DEPLOY = "deploy"  # step: deploy under the lease just taken


@dataclasses.dataclass(frozen=True)
class Policy:
    model_name: str
    lease_s: float = DEPLOY_LEASE_S


@dataclasses.dataclass(frozen=True)
class Delivered:
    """Pub/Sub delivered the event to this instance."""

    event: ProductionChanged
    deployer: str  # this delivery's id: the owner of the lease it takes


@dataclasses.dataclass(frozen=True)
class Succeeded:
    """The new revision serves the event's version."""

    event: ProductionChanged
    deployer: str
    revision: str
    url: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """The deploy failed; the old version still serves."""

    event: ProductionChanged
    deployer: str
    error: str


Evidence = Delivered | Succeeded | Failed


def decide(state: DeploymentState, evidence: Evidence, policy: Policy, now: datetime) -> Decision[Action]:
    """What the redeploy does next given what it saw, and what it writes."""
    match evidence:
        case Delivered():
            return _delivered(state, evidence, policy, now)
        case Succeeded():
            return _succeeded(state, evidence, now)
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
    serving = state.serving
    if serving is not None and (serving.version, serving.sha256) == (event.model_version, event.sha256):
        return Decision(Action.ALREADY_SERVING, state)
    if state.target is not None and state.target.event_id != event.event_id:
        return Decision(Action.SUPERSEDED, state, detail=f"version {state.target.version} was announced since")
    deploying = state.deploying
    if deploying is not None and deploying.active(now):
        if deploying.key == event.event_id:
            return Decision(Action.IN_PROGRESS, state)
        return Decision(Action.BUSY, state, detail=f"the deploy of event {deploying.key} is still running")
    lease = Lease.take(event.event_id, delivered.deployer, now, policy.lease_s)
    return Decision(Action.DEPLOY, dataclasses.replace(state, deploying=lease))


def _succeeded(state: DeploymentState, succeeded: Succeeded, now: datetime) -> Decision[Action]:
    event = succeeded.event
    replaced = state.serving.version if state.serving is not None else None
    older = replaced is not None and int(replaced) > int(event.model_version)
    action, kind = (Action.ROLLED_BACK, HistoryKind.ROLLED_BACK) if older else (Action.DEPLOYED, HistoryKind.DEPLOYED)
    serving = Serving(
        version=event.model_version,
        run_id=event.mlflow_run_id,
        sha256=event.sha256,
        model_uri=event.model_uri,
        event_id=event.event_id,
        deployed_at=now,
        revision=succeeded.revision,
        url=succeeded.url,
    )
    entry = HistoryEntry(
        kind, event.model_version, now, event_id=event.event_id, revision=succeeded.revision, url=succeeded.url
    )
    return Decision(action, dataclasses.replace(_released(state, succeeded.deployer), serving=serving), (entry,))


def _released(state: DeploymentState, deployer: str) -> DeploymentState:
    """The deploy lease given back, if it is still this delivery's (it may have expired and been taken since)."""
    if state.deploying is not None and state.deploying.owner == deployer:
        return dataclasses.replace(state, deploying=None)
    return state
