"""The redeploy's decisions as a table: (state, evidence) -> (action, new state, history). No server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core import rollout as rollouts
from sentiment_core.deployments import (
    Canary,
    Decision,
    DeploymentState,
    Desired,
    HistoryEntry,
    HistoryKind,
    Lease,
    Rollout,
    Serving,
    Target,
)
from sentiment_core.events import ProductionChanged
from tests.functions.conftest import redeploy_module

decisions = redeploy_module("redeploy_decisions")
Action = decisions.Action
Delivered, Succeeded, Failed = decisions.Delivered, decisions.Succeeded, decisions.Failed
Move, Plan, Live, Continued = decisions.Move, decisions.Plan, decisions.Live, decisions.Continued

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
POLICY = decisions.Policy(model_name="m", serving_bucket="b", lease_s=900)
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


DEPLOY_V2 = Plan(Move.DEPLOY, EVENT_V2)

# A rollout of version 2 beside version 1 (serving on predict-00001).
EVENT_V1 = ProductionChanged("event-1", "m", "1", "run-1", "gs://b/m/v1", SHA, "2")
ROLLOUT_10 = Rollout.of(rollouts.start("1", "2", EARLIER), 10)
ROLLOUT_50 = dataclasses.replace(ROLLOUT_10, step=1, candidate_percent=50)
ROLLING_OUT = dataclasses.replace(V2_ANNOUNCED, rollout=ROLLOUT_10)
CANARY_10 = Canary("2", "run-2", SHA, "gs://b/m/v2", "event-2", "predict-v2", "https://c", "predict-00001", 10, EARLIER)
AT_10 = dataclasses.replace(ROLLING_OUT, canary=CANARY_10)
AT_50_ASKED = dataclasses.replace(AT_10, rollout=ROLLOUT_50)
COMPLETED = dataclasses.replace(
    AT_10, rollout=ROLLOUT_10.ended(rollouts.RolloutStatus.COMPLETED, rollouts.Reason.EVIDENCE_HOLDS, "", EARLIER)
)
ROLLED_BACK = dataclasses.replace(
    AT_10,
    target=Target("1", "run-1", SHA, "gs://b/m/v1", "event-1", EARLIER),
    rollout=ROLLOUT_10.ended(rollouts.RolloutStatus.ROLLED_BACK, rollouts.Reason.FEEDBACK_WORSE, "", EARLIER),
)
TWO_REVISIONS = {"stable_revision": "predict-00001", "candidate_revision": "predict-v2"}
# Version 3 promoted during the rollout of version 2: a new rollout of 3 beside 1, with 2's canary still live.
V3_OVER_CANARY = dataclasses.replace(
    AT_10,
    target=Target("3", "run-3", SHA, "gs://b/m/v3", "event-4", EARLIER),
    rollout=Rollout.of(rollouts.start("1", "3", EARLIER), 10),
)
EVENT_V3 = ProductionChanged("event-4", "m", "3", "run-3", "gs://b/m/v3", SHA, "1")


def leased(state: DeploymentState, key: str = "event-2", lease: Lease = NEW_LEASE) -> DeploymentState:
    return dataclasses.replace(state, deploying=dataclasses.replace(lease, key=key))


def moved(kind: HistoryKind, version: str, detail: str, percent: int, revision: str, url: str) -> HistoryEntry:
    return HistoryEntry(
        kind,
        version,
        NOW,
        event_id="event-2",
        revision=revision,
        url=url,
        detail=detail,
        stable_version="1",
        percent=percent,
    )


def serving(event: ProductionChanged, revision: str = "predict-00002") -> Serving:
    return Serving(
        event.model_version, event.mlflow_run_id, event.sha256, event.model_uri, event.event_id, NOW, revision, "u"
    )


TABLE = [
    pytest.param(
        V2_ANNOUNCED,
        Delivered(EVENT_V2, ME),
        Decision(
            Action.DEPLOY, dataclasses.replace(V2_ANNOUNCED, deploying=NEW_LEASE), detail="deploy", plan=DEPLOY_V2
        ),
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
            detail="deploy",
            plan=Plan(Move.DEPLOY, dataclasses.replace(EVENT_V2, previous_version="2")),
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
        Decision(
            Action.DEPLOY, dataclasses.replace(V2_ANNOUNCED, deploying=NEW_LEASE), detail="deploy", plan=DEPLOY_V2
        ),
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
    # A rollout: the document asks for a split; the event only wakes the redeploy up.
    pytest.param(
        ROLLING_OUT,
        Delivered(EVENT_V2, ME),
        Decision(Action.DEPLOY, leased(ROLLING_OUT), detail="candidate", plan=Plan(Move.CANDIDATE, EVENT_V2, 10)),
        id="rollout-started-deploys-the-candidate-beside-the-serving-version-at-its-share",
    ),
    pytest.param(
        AT_10,
        Delivered(EVENT_V2, ME),
        Decision(Action.ALREADY_SERVING, AT_10),
        id="rollout-share-already-applied-changes-nothing",
    ),
    pytest.param(
        AT_50_ASKED,
        Delivered(EVENT_V2, ME),
        Decision(
            Action.DEPLOY, leased(AT_50_ASKED), detail="split", plan=Plan(Move.SPLIT, EVENT_V2, 50, **TWO_REVISIONS)
        ),
        id="rollout-advanced-moves-the-candidates-share",
    ),
    pytest.param(
        COMPLETED,
        Delivered(EVENT_V2, ME),
        Decision(
            Action.DEPLOY, leased(COMPLETED), detail="complete", plan=Plan(Move.COMPLETE, EVENT_V2, 10, **TWO_REVISIONS)
        ),
        id="rollout-completed-gives-the-candidate-all-the-traffic",
    ),
    pytest.param(
        ROLLED_BACK,
        Delivered(EVENT_V1, ME),
        Decision(
            Action.DEPLOY,
            leased(ROLLED_BACK, "event-1"),
            detail="roll_back",
            plan=Plan(Move.ROLL_BACK, dataclasses.replace(EVENT_V1, previous_version="1"), 10, **TWO_REVISIONS),
        ),
        id="rollout-rolled-back-gives-the-stable-revision-all-the-traffic",
    ),
    pytest.param(
        ROLLED_BACK,
        Delivered(EVENT_V2, ME),
        Decision(Action.SUPERSEDED, ROLLED_BACK, detail="version 1 was announced since"),
        id="candidates-event-after-its-rollback-changes-nothing",
    ),
    pytest.param(
        V3_OVER_CANARY,
        Delivered(EVENT_V3, ME),
        Decision(
            Action.DEPLOY,
            leased(V3_OVER_CANARY, "event-4"),
            detail="roll_back",
            plan=Plan(Move.ROLL_BACK, EVENT_V3, 10, **TWO_REVISIONS),
        ),
        id="new-rollout-over-a-live-canary-drains-that-canary-first",
    ),
    pytest.param(
        dataclasses.replace(V3_OVER_CANARY, canary=None),
        Delivered(EVENT_V3, ME),
        Decision(
            Action.DEPLOY,
            leased(dataclasses.replace(V3_OVER_CANARY, canary=None), "event-4"),
            detail="candidate",
            plan=Plan(Move.CANDIDATE, EVENT_V3, 10),
        ),
        id="new-rollout-once-the-old-canary-is-drained-deploys-its-candidate",
    ),
    pytest.param(
        leased(ROLLING_OUT, lease=MY_LEASE),
        Succeeded(EVENT_V2, ME, "predict-v2", "https://c", Plan(Move.CANDIDATE, EVENT_V2, 10), "predict-00001"),
        Decision(
            Action.TRAFFIC_MOVED,
            dataclasses.replace(AT_10, canary=dataclasses.replace(CANARY_10, applied_at=NOW)),
            (
                moved(
                    HistoryKind.TRAFFIC,
                    "2",
                    "version 2 deployed beside version 1 with 10% of the traffic",
                    10,
                    "predict-v2",
                    "https://c",
                ),
            ),
            "version 2 deployed beside version 1 with 10% of the traffic",
        ),
        id="candidate-deployed-is-recorded-as-the-canary-with-its-share",
    ),
    pytest.param(
        leased(AT_50_ASKED, lease=MY_LEASE),
        Succeeded(EVENT_V2, ME, "predict-v2", "", Plan(Move.SPLIT, EVENT_V2, 50, **TWO_REVISIONS)),
        Decision(
            Action.TRAFFIC_MOVED,
            dataclasses.replace(AT_50_ASKED, canary=dataclasses.replace(CANARY_10, percent=50, applied_at=NOW)),
            (
                moved(
                    HistoryKind.TRAFFIC,
                    "2",
                    "version 2 now has 50% of the traffic, version 1 the rest",
                    50,
                    "predict-v2",
                    None,
                ),
            ),
            "version 2 now has 50% of the traffic, version 1 the rest",
        ),
        id="share-moved-is-recorded-on-the-canary",
    ),
    pytest.param(
        leased(COMPLETED, lease=MY_LEASE),
        Succeeded(EVENT_V2, ME, "predict-v2", "https://predict", Plan(Move.COMPLETE, EVENT_V2, 10, **TWO_REVISIONS)),
        Decision(
            Action.TRAFFIC_MOVED,
            dataclasses.replace(
                COMPLETED,
                serving=Serving("2", "run-2", SHA, "gs://b/m/v2", "event-2", NOW, "predict-v2", "https://predict"),
                canary=None,
            ),
            (
                moved(
                    HistoryKind.DEPLOYED,
                    "2",
                    "version 2 takes all the traffic; version 1 drained",
                    100,
                    "predict-v2",
                    "https://predict",
                ),
            ),
            "version 2 takes all the traffic; version 1 drained",
        ),
        id="completed-candidate-becomes-what-serves",
    ),
    pytest.param(
        leased(ROLLED_BACK, "event-1", MY_LEASE),
        Succeeded(
            EVENT_V1, ME, "predict-00001", "https://predict", Plan(Move.ROLL_BACK, EVENT_V1, 10, **TWO_REVISIONS)
        ),
        Decision(
            Action.TRAFFIC_MOVED,
            dataclasses.replace(ROLLED_BACK, canary=None),
            (
                dataclasses.replace(
                    moved(
                        HistoryKind.TRAFFIC,
                        "2",
                        "version 1 takes all the traffic back; version 2 drained",
                        0,
                        "predict-00001",
                        "https://predict",
                    ),
                    event_id="event-1",
                ),
            ),
            "version 1 takes all the traffic back; version 2 drained",
        ),
        id="rolled-back-candidate-is-gone-and-the-stable-version-keeps-serving",
    ),
    # A delivery never trusts the document while another deploy runs: that deploy may be starting a candidate
    # the document does not show yet; its holder looks again when done.
    pytest.param(
        dataclasses.replace(ROLLED_BACK, canary=None, deploying=THEIR_LEASE),
        Delivered(EVENT_V1, ME),
        Decision(
            Action.BUSY,
            dataclasses.replace(ROLLED_BACK, canary=None, deploying=THEIR_LEASE),
            detail="the deploy of event event-2 is still running",
        ),
        id="rollback-event-during-the-candidates-deploy-waits-for-redelivery",
    ),
    pytest.param(
        ROLLED_BACK,
        Continued(ME),
        Decision(
            Action.DEPLOY,
            leased(ROLLED_BACK, "event-1"),
            detail="roll_back",
            plan=Plan(Move.ROLL_BACK, dataclasses.replace(EVENT_V1, previous_version="1"), 10, **TWO_REVISIONS),
        ),
        id="delivery-that-deployed-the-candidate-applies-the-rollback-decided-meanwhile",
    ),
    pytest.param(
        AT_50_ASKED,
        Continued(ME),
        Decision(
            Action.DEPLOY, leased(AT_50_ASKED), detail="split", plan=Plan(Move.SPLIT, EVENT_V2, 50, **TWO_REVISIONS)
        ),
        id="delivery-goes-on-with-a-share-moved-meanwhile",
    ),
    pytest.param(AT_10, Continued(ME), Decision(Action.ALREADY_SERVING, AT_10), id="delivery-stops-once-settled"),
    pytest.param(
        dataclasses.replace(AT_50_ASKED, deploying=THEIR_LEASE),
        Continued(ME),
        Decision(
            Action.IN_PROGRESS,
            dataclasses.replace(AT_50_ASKED, deploying=THEIR_LEASE),
            detail="the deploy of event event-2 is running",
        ),
        id="delivery-stops-when-another-took-the-lease",
    ),
    pytest.param(
        dataclasses.replace(ROLLED_BACK, canary=None),
        Delivered(EVENT_V1, ME, Live("predict-00001", "predict-v9", 10)),
        Decision(
            Action.DEPLOY,
            leased(dataclasses.replace(ROLLED_BACK, canary=None), "event-1"),
            detail="drain",
            plan=Plan(Move.DRAIN, EVENT_V1, 10, "predict-00001", "predict-v9"),
        ),
        id="candidate-live-on-the-service-but-unrecorded-is-drained",
    ),
    pytest.param(
        AT_10,
        Delivered(EVENT_V2, ME, Live("predict-00001", "predict-v2", 10)),
        Decision(Action.ALREADY_SERVING, AT_10),
        id="candidate-live-and-recorded-changes-nothing",
    ),
    pytest.param(
        leased(dataclasses.replace(ROLLED_BACK, canary=None), "event-1", MY_LEASE),
        Succeeded(EVENT_V1, ME, "predict-00001", "u", Plan(Move.DRAIN, EVENT_V1, 10, "predict-00001", "predict-v9")),
        Decision(
            Action.TRAFFIC_MOVED,
            dataclasses.replace(ROLLED_BACK, canary=None),
            (
                HistoryEntry(
                    HistoryKind.TRAFFIC,
                    None,
                    NOW,
                    revision="predict-v9",
                    stable_version="1",
                    percent=0,
                    detail="revision predict-v9 had 10% of the traffic and no record: drained",
                ),
            ),
            "revision predict-v9 had 10% of the traffic and no record: drained",
        ),
        id="unrecorded-candidate-drained-is-recorded",
    ),
]


def refused(event: ProductionChanged, expected_uri: str) -> tuple[HistoryEntry, str]:
    """The history entry and detail of an event refused because its model_uri is not `expected_uri`."""
    detail = f"model_uri {event.model_uri!r} is not {expected_uri!r}: version {event.model_version} deploys nothing"
    entry = HistoryEntry(
        HistoryKind.REFUSED,
        event.model_version,
        NOW,
        trigger="redeploy",
        event_id=event.event_id,
        model_uri=event.model_uri,
        sha256=event.sha256,
        reason="model_uri_not_allowed",
        detail=detail,
    )
    return entry, detail


# Events (or announced targets) naming a folder other than their own version's in the serving bucket `b`.
PLANTED = {
    "attacker-bucket": "gs://attacker-public-bucket/evil",
    "other-bucket-same-path": "gs://evil/m/v2",
    "bucket-name-prefix": "gs://b-evil/m/v2",
    "other-version-folder": "gs://b/m/v1",
    "other-model-folder": "gs://b/other/v2",
    "subfolder": "gs://b/m/v2/evil",
    "parent-escape": "gs://b/m/v2/../v1",
    "no-v-prefix": "gs://b/m/2",
    "local-path": "/tmp/m/v2",
    "file-uri": "file:///tmp/m/v2",
}
URI_TABLE = [
    *[pytest.param(uri, False, id=f"{name}-refused") for name, uri in PLANTED.items()],
    pytest.param("gs://b/m/v2", True, id="own-folder-accepted"),
    pytest.param("gs://b/m/v2/", True, id="own-folder-with-slash-accepted"),
]


@pytest.mark.parametrize(("uri", "accepted"), URI_TABLE)
def test_redeploy_decide_event_uri_outside_its_staged_folder_is_refused_and_recorded(uri, accepted) -> None:
    event = dataclasses.replace(EVENT_V2, model_uri=uri)
    state = dataclasses.replace(V2_ANNOUNCED, target=Target("2", "run-2", SHA, uri, "event-2", EARLIER))

    decision = decisions.decide(state, Delivered(event, ME), POLICY, NOW)

    if accepted:
        assert (decision.action, decision.plan.event.model_uri) == (Action.DEPLOY, uri)
    else:
        entry, detail = refused(event, "gs://b/m/v2")
        assert decision == Decision(Action.REFUSED, state, (entry,), detail, event_id="event-2")


def test_redeploy_decide_planted_target_is_refused_whichever_event_wakes_it() -> None:
    """A target written into the document by hand (not by the watcher) starts no revision, even when a valid
    event (an older one redelivered, or the watcher's) is what wakes the redeploy."""
    planted = Target("3", "run-3", SHA, "gs://attacker-public-bucket/evil", "event-2", EARLIER)
    state = dataclasses.replace(V2_ANNOUNCED, target=planted)

    decision = decisions.decide(state, Delivered(EVENT_V2, ME), POLICY, NOW)

    entry, detail = refused(planted.event("m", "1"), "gs://b/m/v3")
    assert decision == Decision(Action.REFUSED, state, (entry,), detail, event_id="event-2")
    assert decision.state.deploying is None  # no lease taken: the next valid event is not held up


def test_redeploy_decide_planted_target_found_after_a_move_is_refused() -> None:
    planted = dataclasses.replace(V3_ANNOUNCED.target, model_uri="gs://attacker-public-bucket/evil")
    state = dataclasses.replace(V3_ANNOUNCED, target=planted)

    decision = decisions.decide(state, Continued(ME), POLICY, NOW)

    assert decision.action is Action.REFUSED
    assert decision.history[0].reason == "model_uri_not_allowed"


@pytest.mark.parametrize(("state", "evidence", "expected"), TABLE)
def test_redeploy_decide_table(state, evidence, expected) -> None:
    decision = decisions.decide(state, evidence, POLICY, NOW)

    assert decision == expected


def test_redeploy_decide_on_unknown_evidence_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no decision"):
        decisions.decide(DeploymentState(), object(), POLICY, NOW)
