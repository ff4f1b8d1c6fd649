"""registry_watcher's decisions as a table: (state, evidence) -> (action, new state, history). No server."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sentiment_core.deployments import (
    Canary,
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
from sentiment_core.rollout import Command, Reason, RolloutSettings, RolloutStatus, VersionCounts, start
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
V2_AUTOMATIC = Desired("2", "run-2", "alias", promotion="automatic")  # AUTO_PROMOTE=canary moved the alias
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
STAGED_V2 = entry(
    HistoryKind.STAGED, "2", trigger="tick", model_uri="gs://b/m/v2", sha256=SHA, event_id="event-2", promotion="manual"
)
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


ROLLOUT_STARTED_V2 = entry(
    HistoryKind.ROLLOUT_STARTED,
    "2",
    detail="version 2 gets 10% of the traffic, version 1 the rest",
    stable_version="1",
    percent=10,
)


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
                rollout=Rollout.of(start("1", "2", NOW), 10),
            ),
            (STAGED_V2, ROLLOUT_STARTED_V2),
            event_id="event-2",
        ),
        id="staged-under-our-claim-announces-the-event-and-starts-a-rollout-beside-the-serving-version",
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
        DeploymentState(desired=V2_AUTOMATIC, claim=MY_CLAIM),
        Staged(ME, V2_AUTOMATIC, SHA, "gs://b/m/v2", "event-2", "tick"),
        Decision(
            Action.PUBLISH,
            DeploymentState(
                desired=V2_AUTOMATIC,
                target=TARGET_V2_NOW,
                outbox=dataclasses.replace(EVENT_V2, previous_version=None),
            ),
            (dataclasses.replace(STAGED_V2, promotion="automatic"),),
            event_id="event-2",
        ),
        id="a-version-training-promoted-on-its-own-is-staged-with-its-promotion-recorded-as-automatic",
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


# A rollout on a tick: the registry's answer, then both versions' counts, through the real rollout policy.
Measured, RegistryUpdated = decisions.Measured, decisions.RegistryUpdated
TARGET_V2 = Target("2", "run-2", SHA, "gs://b/m/v2", "event-2", NOW - timedelta(seconds=30))
CANARY_V2 = Canary("2", "run-2", SHA, "gs://b/m/v2", "event-2", "predict-v2", "https://c", "predict-00001", 10, EARLIER)
IN_ROLLOUT = dataclasses.replace(SERVES_V1, desired=V2, target=TARGET_V2, rollout=ROLLING_V2, canary=CANARY_V2)
NOT_APPLIED = dataclasses.replace(IN_ROLLOUT, canary=None)
QUIET = (VersionCounts("1"), VersionCounts("2"))
EQUAL = (
    VersionCounts("1", predictions=9000, positive=4500, feedback=900, correct=810),
    VersionCounts("2", predictions=1000, positive=500, feedback=100, correct=90),
)
WORSE = (
    VersionCounts("1", predictions=9000, positive=4500, feedback=900, correct=855),
    VersionCounts("2", predictions=1000, positive=500, feedback=100, correct=60),
)
FAST = RolloutSettings(steps=(10, 50, 100), bake_s=60, min_feedback=100, max_s=86_400)


ROLLED_BACK_UNAPPLIED = dataclasses.replace(
    IN_ROLLOUT,
    target=dataclasses.replace(TARGET_V1, announced_at=NOW - timedelta(seconds=30)),
    rollout=ROLLING_V2.ended(RolloutStatus.ROLLED_BACK, Reason.FEEDBACK_WORSE, "worse", EARLIER),
)


def measured(counts: tuple[VersionCounts, VersionCounts], desired: str = "2") -> object:
    return Measured(counts[0], counts[1], desired, "tick")


def with_rollout(state: DeploymentState, **fields) -> DeploymentState:
    return dataclasses.replace(state, rollout=dataclasses.replace(state.rollout, **fields))


ROLLOUT_TABLE = [
    # state, evidence, settings, action, rollout state, candidate's share, announced version, event's previous
    # version (None: nothing published), history kinds, the rollout's reason
    pytest.param(
        IN_ROLLOUT,
        looked(V2),
        FAST,
        Action.MEASURE,
        "in_progress",
        10,
        "2",
        None,
        [],
        None,
        id="tick-during-a-rollout-measures-first",
    ),
    pytest.param(
        IN_ROLLOUT,
        looked(V1),
        FAST,
        Action.MEASURE,
        "in_progress",
        10,
        "2",
        None,
        [],
        None,
        id="alias-back-on-the-stable-version-during-a-rollout-measures-and-aborts-next",
    ),
    pytest.param(
        IN_ROLLOUT,
        looked(V3),
        FAST,
        Action.PUBLISH,
        "aborted",
        0,
        "1",
        "2",
        ["rollout_aborted"],
        "superseded",
        id="another-version-promoted-during-a-rollout-ends-it-and-announces-the-stable-version-first",
    ),
    pytest.param(
        with_rollout(IN_ROLLOUT, step_started_at=NOW - timedelta(seconds=30)),
        measured(EQUAL),
        FAST,
        Action.ROLLOUT_HELD,
        "in_progress",
        10,
        "2",
        None,
        [],
        "baking",
        id="equal-evidence-before-the-bake-time-holds",
    ),
    pytest.param(
        with_rollout(IN_ROLLOUT, step_started_at=NOW - timedelta(seconds=61)),
        measured(EQUAL),
        FAST,
        Action.PUBLISH,
        "in_progress",
        50,
        "2",
        "1",
        ["rollout_advanced"],
        "evidence_holds",
        id="equal-evidence-baked-with-enough-feedback-advances-and-announces-the-new-share",
    ),
    pytest.param(
        with_rollout(NOT_APPLIED, step_started_at=NOW - timedelta(seconds=61)),
        measured(EQUAL),
        FAST,
        Action.ROLLOUT_HELD,
        "in_progress",
        10,
        "2",
        None,
        [],
        "not_ready",
        id="candidate-not-yet-at-its-share-holds-as-not-ready",
    ),
    pytest.param(
        with_rollout(IN_ROLLOUT, step=1, candidate_percent=50, step_started_at=NOW - timedelta(seconds=61)),
        measured(EQUAL),
        FAST,
        Action.ROLLOUT_HELD,
        "in_progress",
        50,
        "2",
        None,
        [],
        "not_ready",
        id="advanced-share-not-yet-applied-holds-as-not-ready",
    ),
    pytest.param(
        IN_ROLLOUT,
        measured(WORSE),
        FAST,
        Action.PUBLISH,
        "rolled_back",
        0,
        "1",
        "2",
        ["rollout_rolled_back"],
        "feedback_worse",
        id="worse-feedback-rolls-back-announcing-the-stable-version-again",
    ),
    pytest.param(
        IN_ROLLOUT,
        measured(QUIET, desired="1"),
        FAST,
        Action.PUBLISH,
        "aborted",
        0,
        "1",
        "2",
        ["rollout_aborted"],
        "aborted",
        id="alias-moved-back-aborts-and-announces-the-stable-version",
    ),
    pytest.param(
        with_command(IN_ROLLOUT, COMPLETE_ASKED),
        measured(QUIET),
        FAST,
        Action.PUBLISH,
        "completed",
        100,
        "2",
        "1",
        ["rollout_completed"],
        "completed_by_operator",
        id="operator-complete-gives-the-candidate-all-the-traffic",
    ),
    pytest.param(
        with_command(IN_ROLLOUT, ABORT_ASKED),
        measured(EQUAL),
        FAST,
        Action.PUBLISH,
        "aborted",
        0,
        "1",
        "2",
        ["rollout_aborted"],
        "aborted",
        id="operator-abort-sends-all-the-traffic-back",
    ),
    pytest.param(
        with_rollout(IN_ROLLOUT, started_at=NOW - timedelta(days=2)),
        measured(QUIET),
        FAST,
        Action.PUBLISH,
        "rolled_back",
        0,
        "1",
        "2",
        ["rollout_rolled_back"],
        "max_time",
        id="no-evidence-within-the-maximum-time-rolls-back",
    ),
    pytest.param(
        dataclasses.replace(
            with_rollout(IN_ROLLOUT, step_started_at=NOW - timedelta(seconds=61)),
            target=dataclasses.replace(TARGET_V2, staged_at=NOW - timedelta(seconds=600)),
            canary=None,
        ),
        measured(EQUAL),
        FAST,
        Action.PUBLISH,
        "in_progress",
        10,
        "2",
        "1",
        ["reannounced"],
        "not_ready",
        id="candidate-never-deployed-long-after-its-event-is-announced-again",
    ),
    pytest.param(
        V2_CLAIMED,
        staged(),
        RolloutSettings(steps=(100,)),
        Action.PUBLISH,
        "completed",
        100,
        "2",
        "1",
        ["staged", "rollout_started"],
        "immediate",
        id="rollout-steps-100-switches-at-once-with-only-the-tags-left-to-write",
    ),
    pytest.param(
        dataclasses.replace(V2_CLAIMED, serving=None),
        staged(),
        FAST,
        Action.PUBLISH,
        None,
        None,
        "2",
        "1",
        ["staged"],
        None,
        id="nothing-serving-yet-has-nothing-to-roll-out-beside",
    ),
    pytest.param(
        dataclasses.replace(
            with_rollout(IN_ROLLOUT, step_started_at=NOW - timedelta(seconds=30)),
            target=dataclasses.replace(TARGET_V2, staged_at=NOW - timedelta(seconds=600)),
        ),
        measured(EQUAL),
        FAST,
        Action.ROLLOUT_HELD,
        "in_progress",
        10,
        "2",
        None,
        [],
        "baking",
        id="rollout-holding-with-its-share-applied-is-not-announced-again-however-long",
    ),
    pytest.param(
        dataclasses.replace(
            ROLLED_BACK_UNAPPLIED, target=dataclasses.replace(TARGET_V1, announced_at=NOW - timedelta(seconds=600))
        ),
        looked(V1),
        FAST,
        Action.PUBLISH,
        "rolled_back",
        0,
        "1",
        "1",
        ["reannounced"],
        "feedback_worse",
        id="rollback-never-applied-is-announced-again",
    ),
    pytest.param(
        dataclasses.replace(ROLLED_BACK_UNAPPLIED, desired=V1),
        looked(V3),
        FAST,
        Action.TRAFFIC_PENDING,
        "rolled_back",
        0,
        "1",
        None,
        [],
        "feedback_worse",
        id="new-version-waits-while-the-last-candidate-is-still-live",
    ),
    pytest.param(
        IN_ROLLOUT,
        looked(None),
        FAST,
        Action.MEASURE,
        "in_progress",
        10,
        "2",
        None,
        [],
        None,
        id="alias-removed-during-a-rollout-measures",
    ),
    pytest.param(
        IN_ROLLOUT,
        measured(QUIET, desired=None),
        FAST,
        Action.PUBLISH,
        "aborted",
        0,
        "1",
        "2",
        ["rollout_aborted"],
        "aborted",
        id="alias-removed-during-a-rollout-aborts-it",
    ),
]


@pytest.mark.parametrize(
    ("state", "evidence", "settings", "action", "status", "percent", "announced", "previous", "kinds", "reason"),
    ROLLOUT_TABLE,
)
def test_rollout_on_a_tick_table(
    state, evidence, settings, action, status, percent, announced, previous, kinds, reason
) -> None:
    policy = dataclasses.replace(POLICY, rollout=settings)

    decision = decisions.decide(state, evidence, policy, NOW)

    rollout = decision.state.rollout
    assert decision.action is action
    assert (rollout and rollout.state.value, rollout and rollout.candidate_percent) == (status, percent)
    assert decision.state.target.version == announced
    outbox = decision.state.outbox
    if previous is not None:  # published: the announced version's event, naming the version it replaces
        assert (outbox.model_version, outbox.previous_version) == (announced, previous)
    elif action is Action.PUBLISH:  # a first deployment: its event names no previous version
        assert (outbox.model_version, outbox.previous_version) == (announced, None)
    else:
        assert outbox is None
    assert [entry.kind.value for entry in decision.history] == kinds
    last = rollout.last_decision if rollout else None
    assert (last.reason.value if last else None) == reason


def test_rollback_entry_records_the_reason_and_every_checks_numbers() -> None:
    decision = decisions.decide(IN_ROLLOUT, measured(WORSE), dataclasses.replace(POLICY, rollout=FAST), NOW)

    (entry_,) = decision.history
    feedback = next(check for check in entry_.checks if check["name"] == "feedback_worse")
    assert (entry_.reason, entry_.version, entry_.stable_version, entry_.percent) == ("feedback_worse", "2", "1", 0)
    assert (feedback["candidate_events"], feedback["candidate_total"]) == (40, 100)
    assert (feedback["stable_events"], feedback["stable_total"]) == (45, 900)
    assert feedback["failed"]
    assert feedback["statistic"] >= feedback["threshold"]
    assert decision.state.rollout.registry_updated is False  # the alias and tags are the next effect


def test_rollback_announces_the_stable_version_with_the_event_that_deployed_it() -> None:
    decision = decisions.decide(IN_ROLLOUT, measured(WORSE), dataclasses.replace(POLICY, rollout=FAST), NOW)

    assert decision.state.target == dataclasses.replace(TARGET_V1, announced_at=NOW)
    assert decision.state.outbox == ProductionChanged("event-1", "m", "1", "run-1", "gs://b/m/v1", SHA, "2")
    assert decision.event_id == "event-1"


def test_rollout_evidence_of_other_versions_changes_nothing() -> None:
    stale = Measured(VersionCounts("1"), VersionCounts("7"), "2", "tick")

    decision = decisions.decide(IN_ROLLOUT, stale, POLICY, NOW)

    assert (decision.action, decision.writes(IN_ROLLOUT)) == (Action.UP_TO_DATE, False)


ENDED = dataclasses.replace(
    IN_ROLLOUT, rollout=ROLLING_V2.ended(RolloutStatus.ROLLED_BACK, Reason.FEEDBACK_WORSE, "worse", EARLIER)
)


def test_registry_updated_after_an_ended_rollout_is_recorded_once() -> None:
    told = RegistryUpdated("2", ROLLING_V2.started_at, "version 2 tagged rolled_back (feedback_worse)")

    first = decisions.decide(ENDED, told, POLICY, NOW)
    again = decisions.decide(first.state, told, POLICY, NOW)

    assert first.state.rollout.registry_updated is True
    assert [entry.kind for entry in first.history] == [HistoryKind.REGISTRY_UPDATED]
    assert (again.action, again.writes(first.state)) == (Action.RECORDED, False)


def test_registry_updated_for_an_older_rollout_changes_nothing() -> None:
    told = RegistryUpdated("2", ROLLING_V2.started_at - timedelta(days=1), "old")

    decision = decisions.decide(ENDED, told, POLICY, NOW)

    assert decision.writes(ENDED) is False


def test_rollout_evidence_is_what_was_counted_after_its_baseline() -> None:
    baseline = (
        VersionCounts("1", predictions=5000, positive=2500, feedback=500, correct=475),
        VersionCounts("2", predictions=300, positive=150, feedback=300, correct=100),  # an earlier rollout of 2
    )
    state = with_rollout(IN_ROLLOUT, baseline=baseline)
    now_counts = (
        VersionCounts("1", predictions=5900, positive=2950, feedback=590, correct=560),
        VersionCounts("2", predictions=400, positive=200, feedback=310, correct=109),
    )

    with_baseline = decisions.decide(state, measured(now_counts), dataclasses.replace(POLICY, rollout=FAST), NOW)
    without = decisions.decide(IN_ROLLOUT, measured(now_counts), dataclasses.replace(POLICY, rollout=FAST), NOW)

    feedback = next(c for c in with_baseline.state.rollout.last_decision.checks if c.name == "feedback_worse")
    assert (feedback.candidate_events, feedback.candidate_total) == (1, 10)
    assert (feedback.stable_events, feedback.stable_total) == (5, 90)
    assert with_baseline.state.rollout.in_progress
    assert without.state.rollout.state is RolloutStatus.ROLLED_BACK  # the earlier rollout's answers would count


def test_staged_baseline_of_another_hour_is_not_used() -> None:
    counts = (VersionCounts("1", predictions=10), VersionCounts("2"))
    later = NOW + timedelta(minutes=30)
    same_hour = dataclasses.replace(staged(), baseline=counts, baseline_at=later - timedelta(seconds=5))
    hour_before = dataclasses.replace(staged(), baseline=counts, baseline_at=later - timedelta(hours=1))

    kept = decisions.decide(V2_CLAIMED, same_hour, POLICY, later).state.rollout
    dropped = decisions.decide(V2_CLAIMED, hour_before, POLICY, later).state.rollout

    assert (kept.baseline, dropped.baseline) == (counts, None)


# The watcher's own evaluation: the candidate's accuracy on its evaluation set, beside the serving version's.
Evaluation, EvalLimits = decisions.Evaluation, decisions.EvalLimits
LIMITS = EvalLimits(min_accuracy=0.85, max_regression=0.02)
EVAL_SHA = "e" * 64


def evaluation(candidate: float, serving: float | None = None, version: str | None = "1") -> object:
    return Evaluation(EVAL_SHA, 2000, candidate, version if serving is not None else None, serving)


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        pytest.param(evaluation(0.90), None, id="first-version-above-the-minimum"),
        pytest.param(evaluation(0.85), None, id="exactly-the-minimum"),
        pytest.param(evaluation(0.8499), "eval_accuracy_below_minimum", id="just-below-the-minimum"),
        pytest.param(evaluation(0.5965), "eval_accuracy_below_minimum", id="constant-answer-majority-share"),
        pytest.param(evaluation(float("nan")), "eval_accuracy_below_minimum", id="nan-refuses"),
        pytest.param(evaluation(0.90, 0.91), None, id="within-the-regression-allowed"),
        pytest.param(evaluation(0.90, 0.92), None, id="exactly-the-regression-allowed"),
        pytest.param(evaluation(0.90, 0.9201), "eval_accuracy_regression", id="just-more-than-the-regression"),
        pytest.param(evaluation(0.86, 0.95), "eval_accuracy_regression", id="above-minimum-but-far-below-serving"),
        pytest.param(evaluation(0.95, 0.90), None, id="better-than-serving"),
        pytest.param(evaluation(0.80, 0.70), "eval_accuracy_below_minimum", id="minimum-holds-whatever-serves"),
        pytest.param(
            Evaluation(EVAL_SHA, 2000, 0.86, "1", None, "gs://b/m/v1/model.onnx does not exist"),
            None,
            id="serving-not-scored-only-the-minimum-holds",
        ),
    ],
)
def test_judge_evaluation_table(figures, reason: str | None) -> None:
    refusal = decisions.judge_evaluation(figures, LIMITS)

    assert (refusal[0] if refusal else None) == reason
    if refusal:
        assert "n=2000" in refusal[1]


def test_judge_evaluation_regression_detail_names_both_figures() -> None:
    reason, detail = decisions.judge_evaluation(evaluation(0.86, 0.95), LIMITS)

    assert reason == "eval_accuracy_regression"
    assert all(part in detail for part in ("0.8600", "0.9500", "version 1", "0.0900"))


def test_refusal_on_the_evaluation_records_its_figures_in_the_history() -> None:
    figures = evaluation(0.60, 0.91)
    refused = Rejected(ME, "2", "eval_accuracy_below_minimum", "accuracy 0.6000 ...", "tick", figures)

    decision = decisions.decide(V2_CLAIMED, refused, POLICY, NOW)

    (history,) = decision.history
    assert history.evaluation == {
        "eval_set_sha256": EVAL_SHA,
        "n": 2000,
        "candidate_accuracy": 0.60,
        "serving_version": "1",
        "serving_accuracy": 0.91,
    }
    assert history.to_document()["evaluation"]["candidate_accuracy"] == 0.60
    assert decision.state.refused.reason == "eval_accuracy_below_minimum"


def test_staged_entry_records_the_evaluation_figures() -> None:
    figures = evaluation(0.90, 0.91)

    decision = decisions.decide(V2_CLAIMED, dataclasses.replace(staged(), evaluation=figures), POLICY, NOW)

    assert decision.history[0].kind is HistoryKind.STAGED
    assert decision.history[0].evaluation == figures.to_document()
