"""The redeploy's decisions as a table: (state, evidence) -> (action, new state, history). No server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core.deployments import (
    Decision,
    DeploymentState,
    Desired,
    HistoryEntry,
    HistoryKind,
    Lease,
    Serving,
    Target,
)
from sentiment_core.events import ProductionChanged
from tests.functions.conftest import redeploy_module

decisions = redeploy_module("redeploy_decisions")
Action = decisions.Action
Delivered, Succeeded, Failed = decisions.Delivered, decisions.Succeeded, decisions.Failed

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
POLICY = decisions.Policy(model_name="m", lease_s=900)
ME, OTHER = "delivery-me", "delivery-other"
SHA, OTHER_SHA = "a" * 64, "b" * 64

EVENT_V2 = ProductionChanged("event-2", "m", "2", "run-2", "gs://b/m/v2", SHA, "1")
EVENT_V1_AGAIN = ProductionChanged("event-3", "m", "1", "run-1", "gs://b/m/v1", SHA, "2")
SERVING_V1 = Serving("1", "run-1", SHA, "gs://b/m/v1", "event-1", EARLIER, "predict-00001", "https://predict")
SERVING_V2 = Serving("2", "run-2", SHA, "gs://b/m/v2", "event-2", EARLIER, "predict-00002", "https://predict")
V2_ANNOUNCED = DeploymentState(
    desired=Desired("2", "run-2", "alias"),
    target=Target("2", "run-2", SHA, "gs://b/m/v2", "event-2", EARLIER),
    serving=SERVING_V1,
)
V1_ANNOUNCED_AGAIN = dataclasses.replace(
    V2_ANNOUNCED,
    desired=Desired("1", "run-1", "alias"),
    target=Target("1", "run-1", SHA, "gs://b/m/v1", "event-3", EARLIER),
    serving=SERVING_V2,
)
V3_ANNOUNCED = dataclasses.replace(V2_ANNOUNCED, target=Target("3", "run-3", SHA, "gs://b/m/v3", "event-4", EARLIER))
MY_LEASE = Lease("event-2", ME, NOW + timedelta(seconds=60))
THEIR_LEASE = Lease("event-2", OTHER, NOW + timedelta(seconds=60))
NEW_LEASE = Lease("event-2", ME, NOW + timedelta(seconds=900))


def serving(event: ProductionChanged, revision: str = "predict-00002") -> Serving:
    return Serving(
        event.model_version, event.mlflow_run_id, event.sha256, event.model_uri, event.event_id, NOW, revision, "u"
    )


TABLE = [
    pytest.param(
        V2_ANNOUNCED,
        Delivered(EVENT_V2, ME),
        Decision(Action.DEPLOY, dataclasses.replace(V2_ANNOUNCED, deploying=NEW_LEASE)),
        id="announced-event-takes-the-deploy-lease",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, serving=SERVING_V2),
        Delivered(EVENT_V2, ME),
        Decision(Action.ALREADY_SERVING, dataclasses.replace(V2_ANNOUNCED, serving=SERVING_V2)),
        id="redelivered-event-already-serving-deploys-nothing",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, serving=dataclasses.replace(SERVING_V2, sha256=OTHER_SHA)),
        Delivered(EVENT_V2, ME),
        Decision(
            Action.DEPLOY,
            dataclasses.replace(
                V2_ANNOUNCED, serving=dataclasses.replace(SERVING_V2, sha256=OTHER_SHA), deploying=NEW_LEASE
            ),
        ),
        id="same-version-other-file-is-deployed",
    ),
    pytest.param(
        V3_ANNOUNCED,
        Delivered(EVENT_V2, ME),
        Decision(Action.SUPERSEDED, V3_ANNOUNCED, detail="version 3 was announced since"),
        id="event-superseded-by-a-newer-announcement-deploys-nothing",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=THEIR_LEASE),
        Delivered(EVENT_V2, ME),
        Decision(Action.IN_PROGRESS, dataclasses.replace(V2_ANNOUNCED, deploying=THEIR_LEASE)),
        id="another-delivery-deploying-this-event-is-in-progress",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=dataclasses.replace(THEIR_LEASE, key="event-1")),
        Delivered(EVENT_V2, ME),
        Decision(
            Action.BUSY,
            dataclasses.replace(V2_ANNOUNCED, deploying=dataclasses.replace(THEIR_LEASE, key="event-1")),
            detail="the deploy of event event-1 is still running",
        ),
        id="another-events-deploy-running-makes-this-one-wait-for-redelivery",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=dataclasses.replace(THEIR_LEASE, expires_at=EARLIER)),
        Delivered(EVENT_V2, ME),
        Decision(Action.DEPLOY, dataclasses.replace(V2_ANNOUNCED, deploying=NEW_LEASE)),
        id="expired-deploy-lease-is-taken-over",
    ),
    pytest.param(
        V2_ANNOUNCED,
        Delivered(dataclasses.replace(EVENT_V2, model_name="other"), ME),
        Decision(Action.OTHER_MODEL, V2_ANNOUNCED, detail="this redeploy serves m"),
        id="event-of-another-model-is-ignored",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=MY_LEASE),
        Succeeded(EVENT_V2, ME, "predict-00002", "u"),
        Decision(
            Action.DEPLOYED,
            dataclasses.replace(V2_ANNOUNCED, serving=serving(EVENT_V2)),
            (HistoryEntry(HistoryKind.DEPLOYED, "2", NOW, event_id="event-2", revision="predict-00002", url="u"),),
        ),
        id="deploy-done-records-what-serves-and-releases-the-lease",
    ),
    pytest.param(
        dataclasses.replace(V1_ANNOUNCED_AGAIN, deploying=dataclasses.replace(MY_LEASE, key="event-3")),
        Succeeded(EVENT_V1_AGAIN, ME, "predict-00003", "u"),
        Decision(
            Action.ROLLED_BACK,
            dataclasses.replace(V1_ANNOUNCED_AGAIN, serving=serving(EVENT_V1_AGAIN, "predict-00003")),
            (HistoryEntry(HistoryKind.ROLLED_BACK, "1", NOW, event_id="event-3", revision="predict-00003", url="u"),),
        ),
        id="older-version-deployed-is-a-rollback",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=THEIR_LEASE),
        Succeeded(EVENT_V2, ME, "predict-00002", "u"),
        Decision(
            Action.DEPLOYED,
            dataclasses.replace(V2_ANNOUNCED, serving=serving(EVENT_V2), deploying=THEIR_LEASE),
            (HistoryEntry(HistoryKind.DEPLOYED, "2", NOW, event_id="event-2", revision="predict-00002", url="u"),),
        ),
        id="deploy-done-after-the-lease-was-taken-over-leaves-that-lease",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, deploying=MY_LEASE),
        Failed(EVENT_V2, ME, "revision failed to start"),
        Decision(
            Action.FAILED,
            V2_ANNOUNCED,
            (HistoryEntry(HistoryKind.FAILED, "2", NOW, event_id="event-2", error="revision failed to start"),),
            "revision failed to start",
        ),
        id="failed-deploy-is-recorded-keeps-what-serves-and-releases-the-lease",
    ),
]


@pytest.mark.parametrize(("state", "evidence", "expected"), TABLE)
def test_redeploy_decide_table(state, evidence, expected) -> None:
    decision = decisions.decide(state, evidence, POLICY, NOW)

    assert decision == expected


def test_redeploy_decide_on_unknown_evidence_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no decision"):
        decisions.decide(DeploymentState(), object(), POLICY, NOW)
