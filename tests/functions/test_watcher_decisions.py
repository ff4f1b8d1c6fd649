"""registry_watcher's decisions as a table: (state, evidence) -> (action, new state, history). No server."""

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
    Refusal,
    Rollout,
    RolloutCommand,
    Serving,
    Target,
)
from sentiment_core.events import ProductionChanged
from sentiment_core.rollout import Command, RolloutStatus, start
from tests.functions.conftest import watcher_module

decisions = watcher_module("watcher_decisions")
Action = decisions.Action
Looked, Staged, Rejected, Abandoned, Confirmed, Commanded = (
    decisions.Looked,
    decisions.Staged,
    decisions.Rejected,
    decisions.Abandoned,
    decisions.Confirmed,
    decisions.Commanded,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
POLICY = decisions.Policy(model_name="m", claim_ttl_s=300)
ME, OTHER = "tick-me", "tick-other"
SHA = "a" * 64

V1 = Desired("1", "run-1", "alias")
V2 = Desired("2", "run-2", "alias")
V3 = Desired("3", "run-3", "alias")
TARGET_V1 = Target("1", "run-1", SHA, "gs://b/m/v1", "event-1", EARLIER)
SERVING_V1 = Serving("1", "run-1", SHA, "gs://b/m/v1", "event-1", EARLIER, "predict-00001", "https://predict")
REFUSED_V2 = Refusal("2", "model_invalid", "not an onnx file", EARLIER)
MY_CLAIM = Lease("2", ME, NOW + timedelta(seconds=60))
THEIR_CLAIM = Lease("2", OTHER, NOW + timedelta(seconds=60))
EXPIRED_CLAIM = Lease("2", OTHER, NOW - timedelta(seconds=1))
NEW_CLAIM = Lease("2", ME, NOW + timedelta(seconds=300))
EVENT_V2 = ProductionChanged("event-2", "m", "2", "run-2", "gs://b/m/v2", SHA, "1")

SERVES_V1 = DeploymentState(desired=V1, target=TARGET_V1, serving=SERVING_V1)
V2_CLAIMED = dataclasses.replace(SERVES_V1, desired=V2, claim=MY_CLAIM)
V2_ANNOUNCED = dataclasses.replace(
    SERVES_V1, desired=V2, target=Target("2", "run-2", SHA, "gs://b/m/v2", "event-2", EARLIER), outbox=EVENT_V2
)


def looked(desired: Desired | None, **fields) -> object:
    return Looked(desired=desired, trigger="tick", claimant=ME, **fields)


def staged(claimant: str = ME) -> object:
    return Staged(claimant, V2, SHA, "gs://b/m/v2", "event-2", "tick")


def rejected(claimant: str = ME) -> object:
    return Rejected(claimant, "2", "sha256_mismatch", "file has x, the run logged y", "tick")


def entry(kind: HistoryKind, version: str | None, **fields) -> HistoryEntry:
    return HistoryEntry(kind, version, NOW, **fields)


TARGET_V2_NOW = Target("2", "run-2", SHA, "gs://b/m/v2", "event-2", NOW)
STAGED_V2 = entry(HistoryKind.STAGED, "2", trigger="tick", model_uri="gs://b/m/v2", sha256=SHA, event_id="event-2")
V2_CLAIM_LOST = dataclasses.replace(V2_CLAIMED, claim=THEIR_CLAIM)
REFUSAL_DETAIL = "sha256_mismatch: file has x, the run logged y"

LOST_DETAIL = "version 2 was announced but version 1 serves"
TARGET_V2_RECENT = Target("2", "run-2", SHA, "gs://b/m/v2", "event-2", NOW - timedelta(seconds=30))
NOTHING_SERVES = "no version of m has alias production or stage Production; no version is in service"
KEEPS_V1 = "no version of m has alias production or stage Production; keeping version 1 in service"

ROLLING_V2 = Rollout.of(start("1", "2", EARLIER), 10)
ROLLING = dataclasses.replace(SERVES_V1, rollout=ROLLING_V2)
ROLLED_BACK = dataclasses.replace(
    SERVES_V1, rollout=dataclasses.replace(ROLLING_V2, state=RolloutStatus.ROLLED_BACK, candidate_percent=0)
)
ABORT_ASKED = RolloutCommand(Command.ABORT, EARLIER, "POST /rollout")
COMPLETE_ASKED = RolloutCommand(Command.COMPLETE, EARLIER, "POST /rollout")


def commanded(command: Command) -> object:
    return Commanded(command, "POST /rollout")


def with_command(state: DeploymentState, command: RolloutCommand | None) -> DeploymentState:
    return dataclasses.replace(state, rollout=dataclasses.replace(state.rollout, command=command))


def command_recorded(state: DeploymentState, command: Command) -> Decision:
    detail = f"{command.value} of the rollout of version 2 requested; the next tick applies it"
    history = (entry(HistoryKind.ROLLOUT_COMMAND, "2", trigger="POST /rollout", reason=command.value, detail=detail),)
    recorded = with_command(state, RolloutCommand(command, NOW, "POST /rollout"))
    return Decision(Action.COMMAND_RECORDED, recorded, history, detail)


TABLE = [
    pytest.param(
        DeploymentState(),
        looked(None),
        Decision(Action.NO_PRODUCTION_VERSION, DeploymentState(), detail=NOTHING_SERVES),
        id="nothing-promoted-nothing-serves-says-so-without-version-none",
    ),
    pytest.param(
        SERVES_V1,
        looked(None),
        Decision(
            Action.NO_PRODUCTION_VERSION,
            dataclasses.replace(SERVES_V1, desired=None),
            (entry(HistoryKind.NO_PRODUCTION_VERSION, None, trigger="tick", kept="1"),),
            KEEPS_V1,
        ),
        id="alias-deleted-keeps-serving-and-records-it-once",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=None),
        looked(None),
        Decision(Action.NO_PRODUCTION_VERSION, dataclasses.replace(SERVES_V1, desired=None), detail=KEEPS_V1),
        id="alias-still-deleted-records-nothing-again",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, refused=REFUSED_V2),
        looked(None),
        Decision(
            Action.NO_PRODUCTION_VERSION,
            dataclasses.replace(SERVES_V1, desired=None),
            (entry(HistoryKind.NO_PRODUCTION_VERSION, None, trigger="tick", kept="1"),),
            KEEPS_V1,
        ),
        id="alias-deleted-forgets-a-refusal",
    ),
    pytest.param(
        SERVES_V1,
        looked(V1),
        Decision(Action.UP_TO_DATE, SERVES_V1),
        id="announced-version-is-up-to-date",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, desired=V2, outbox=None),
        looked(V2),
        Decision(
            Action.PUBLISH,
            dataclasses.replace(
                V2_ANNOUNCED, target=dataclasses.replace(V2_ANNOUNCED.target, announced_at=NOW), outbox=EVENT_V2
            ),
            (entry(HistoryKind.REANNOUNCED, "2", event_id="event-2", detail=LOST_DETAIL),),
            LOST_DETAIL,
            event_id="event-2",
        ),
        id="announced-version-still-not-serving-long-after-its-event-is-announced-again-with-its-id",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, outbox=None, target=TARGET_V2_RECENT),
        looked(V2),
        Decision(Action.UP_TO_DATE, dataclasses.replace(V2_ANNOUNCED, outbox=None, target=TARGET_V2_RECENT)),
        id="announced-version-on-its-way-is-left-to-its-event",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, outbox=None, deploying=Lease("event-2", OTHER, NOW + timedelta(60))),
        looked(V2),
        Decision(
            Action.UP_TO_DATE,
            dataclasses.replace(V2_ANNOUNCED, outbox=None, deploying=Lease("event-2", OTHER, NOW + timedelta(60))),
        ),
        id="announced-version-being-deployed-is-not-announced-again",
    ),
    pytest.param(
        dataclasses.replace(
            V2_ANNOUNCED,
            outbox=None,
            target=dataclasses.replace(V2_ANNOUNCED.target, announced_at=NOW - timedelta(seconds=30)),
        ),
        looked(V2),
        Decision(
            Action.UP_TO_DATE,
            dataclasses.replace(
                V2_ANNOUNCED,
                outbox=None,
                target=dataclasses.replace(V2_ANNOUNCED.target, announced_at=NOW - timedelta(seconds=30)),
            ),
        ),
        id="version-announced-again-recently-is-not-announced-on-every-tick",
    ),
    pytest.param(
        SERVES_V1,
        looked(V1, republished="event-1"),
        Decision(Action.REPUBLISHED, SERVES_V1, event_id="event-1"),
        id="up-to-date-after-publishing-the-outbox-says-republished",
    ),
    pytest.param(
        SERVES_V1,
        looked(dataclasses.replace(V1, chosen_by="stage")),
        Decision(Action.UP_TO_DATE, dataclasses.replace(SERVES_V1, desired=dataclasses.replace(V1, chosen_by="stage"))),
        id="up-to-date-records-how-the-version-was-found",
    ),
    pytest.param(
        DeploymentState(),
        looked(V2),
        Decision(Action.CLAIM, DeploymentState(desired=V2, claim=NEW_CLAIM)),
        id="first-promotion-is-claimed",
    ),
    pytest.param(
        SERVES_V1,
        looked(V2),
        Decision(Action.CLAIM, dataclasses.replace(SERVES_V1, desired=V2, claim=NEW_CLAIM)),
        id="new-version-is-claimed-for-the-claim-ttl",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, refused=REFUSED_V2),
        looked(V2),
        Decision(
            Action.REFUSED_EARLIER,
            dataclasses.replace(SERVES_V1, desired=V2, refused=REFUSED_V2),
            detail="model_invalid: not an onnx file",
        ),
        id="refused-version-is-not-checked-again",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, refused=REFUSED_V2),
        looked(V2, retry_refused="2"),
        Decision(Action.CLAIM, dataclasses.replace(SERVES_V1, desired=V2, claim=NEW_CLAIM)),
        id="refused-version-promoted-again-is-claimed",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, refused=REFUSED_V2),
        looked(V3),
        Decision(
            Action.CLAIM, dataclasses.replace(SERVES_V1, desired=V3, claim=dataclasses.replace(NEW_CLAIM, key="3"))
        ),
        id="another-version-promoted-forgets-the-refusal",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, claim=THEIR_CLAIM),
        looked(V2),
        Decision(
            Action.IN_PROGRESS,
            dataclasses.replace(SERVES_V1, desired=V2, claim=THEIR_CLAIM),
            detail="another run is staging version 2",
        ),
        id="unexpired-claim-of-another-run-is-in-progress",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, claim=THEIR_CLAIM),
        looked(V3),
        Decision(
            Action.IN_PROGRESS,
            dataclasses.replace(SERVES_V1, claim=THEIR_CLAIM),
            detail="another run is staging version 2",
        ),
        id="in-progress-leaves-the-document-to-the-claimer",
    ),
    pytest.param(
        dataclasses.replace(SERVES_V1, desired=V2, claim=EXPIRED_CLAIM),
        looked(V2),
        Decision(Action.CLAIM, dataclasses.replace(SERVES_V1, desired=V2, claim=NEW_CLAIM)),
        id="expired-claim-is-taken-over",
    ),
    pytest.param(
        V2_CLAIMED,
        staged(),
        Decision(
            Action.PUBLISH,
            dataclasses.replace(
                SERVES_V1,
                desired=V2,
                target=TARGET_V2_NOW,
                outbox=EVENT_V2,
            ),
            (STAGED_V2,),
            event_id="event-2",
        ),
        id="staged-under-our-claim-announces-the-event-naming-the-previous-version",
    ),
    pytest.param(
        DeploymentState(desired=V2, claim=MY_CLAIM),
        staged(),
        Decision(
            Action.PUBLISH,
            DeploymentState(
                desired=V2,
                target=TARGET_V2_NOW,
                outbox=dataclasses.replace(EVENT_V2, previous_version=None),
            ),
            (STAGED_V2,),
            event_id="event-2",
        ),
        id="first-version-staged-has-no-previous-version",
    ),
    pytest.param(
        V2_CLAIM_LOST,
        staged(),
        Decision(
            Action.IN_PROGRESS,
            V2_CLAIM_LOST,
            detail="the claim on this version expired",
        ),
        id="staged-after-losing-the-claim-announces-nothing",
    ),
    pytest.param(
        V2_CLAIMED,
        rejected(),
        Decision(
            Action.REFUSED,
            dataclasses.replace(
                V2_CLAIMED,
                claim=None,
                refused=Refusal("2", "sha256_mismatch", "file has x, the run logged y", NOW),
            ),
            (
                entry(
                    HistoryKind.REFUSED,
                    "2",
                    trigger="tick",
                    reason="sha256_mismatch",
                    detail="file has x, the run logged y",
                ),
            ),
            REFUSAL_DETAIL,
        ),
        id="refusal-under-our-claim-is-recorded-and-releases-the-claim",
    ),
    pytest.param(
        V2_CLAIM_LOST,
        rejected(),
        Decision(
            Action.REFUSED,
            V2_CLAIM_LOST,
            detail=REFUSAL_DETAIL,
        ),
        id="refusal-after-losing-the-claim-records-nothing",
    ),
    pytest.param(
        V2_CLAIMED,
        Abandoned(ME),
        Decision(Action.RELEASED, dataclasses.replace(V2_CLAIMED, claim=None)),
        id="error-under-our-claim-releases-it",
    ),
    pytest.param(
        V2_CLAIM_LOST,
        Abandoned(ME),
        Decision(Action.RELEASED, V2_CLAIM_LOST),
        id="error-leaves-another-runs-claim-alone",
    ),
    pytest.param(
        V2_ANNOUNCED,
        Confirmed("event-2", "message-7"),
        Decision(
            Action.PUBLISHED,
            dataclasses.replace(V2_ANNOUNCED, outbox=None),
            (entry(HistoryKind.PUBLISHED, "2", event_id="event-2", message_id="message-7"),),
            event_id="event-2",
        ),
        id="confirmed-event-leaves-the-outbox",
    ),
    pytest.param(
        dataclasses.replace(V2_ANNOUNCED, outbox=None),
        Confirmed("event-2", "message-7"),
        Decision(Action.PUBLISHED, dataclasses.replace(V2_ANNOUNCED, outbox=None), event_id="event-2"),
        id="confirmed-event-another-run-cleared-records-nothing",
    ),
    pytest.param(
        V2_ANNOUNCED,
        Confirmed("event-1", "message-7"),
        Decision(Action.PUBLISHED, V2_ANNOUNCED, event_id="event-1"),
        id="confirmed-older-event-keeps-the-newer-one-in-the-outbox",
    ),
    pytest.param(
        SERVES_V1,
        commanded(Command.ABORT),
        Decision(Action.NO_ROLLOUT, SERVES_V1, detail="no rollout is in progress"),
        id="rollout-command-without-any-rollout-changes-nothing",
    ),
    pytest.param(
        ROLLED_BACK,
        commanded(Command.COMPLETE),
        Decision(
            Action.NO_ROLLOUT,
            ROLLED_BACK,
            detail="no rollout is in progress (the last one, of version 2, is rolled_back)",
        ),
        id="rollout-command-after-the-rollout-ended-changes-nothing",
    ),
    pytest.param(
        ROLLING,
        commanded(Command.ABORT),
        command_recorded(ROLLING, Command.ABORT),
        id="abort-during-a-rollout-is-recorded-for-the-next-tick-with-a-history-entry",
    ),
    pytest.param(
        ROLLING,
        commanded(Command.COMPLETE),
        command_recorded(ROLLING, Command.COMPLETE),
        id="complete-during-a-rollout-is-recorded-for-the-next-tick-with-a-history-entry",
    ),
    pytest.param(
        with_command(ROLLING, ABORT_ASKED),
        commanded(Command.ABORT),
        Decision(
            Action.COMMAND_RECORDED,
            with_command(ROLLING, ABORT_ASKED),
            detail="abort was requested already at 2025-06-01T11:00:00+00:00; the next tick applies it",
        ),
        id="same-command-again-writes-nothing",
    ),
    pytest.param(
        with_command(ROLLING, ABORT_ASKED),
        commanded(Command.COMPLETE),
        Decision(
            Action.ABORT_PENDING,
            with_command(ROLLING, ABORT_ASKED),
            detail="an abort requested at 2025-06-01T11:00:00+00:00 is pending",
        ),
        id="complete-never-overrides-a-pending-abort",
    ),
    pytest.param(
        with_command(ROLLING, COMPLETE_ASKED),
        commanded(Command.ABORT),
        command_recorded(ROLLING, Command.ABORT),
        id="abort-overrides-a-pending-complete",
    ),
]


@pytest.mark.parametrize(("state", "evidence", "expected"), TABLE)
def test_watcher_decide_table(state, evidence, expected) -> None:
    decision = decisions.decide(state, evidence, POLICY, NOW)

    assert decision == expected


def test_watcher_decide_on_unknown_evidence_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no decision"):
        decisions.decide(DeploymentState(), object(), POLICY, NOW)
