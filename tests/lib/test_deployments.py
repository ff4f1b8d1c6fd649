"""The deployment document's typed model keeps the stored Firestore format (what /status and the tests read)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import pytest

from sentiment_core import rollout
from sentiment_core.deployments import (
    Canary,
    Decision,
    DeploymentState,
    Desired,
    HistoryEntry,
    HistoryKind,
    Lease,
    RolloutCommand,
)
from tests.support import baking_rollout

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SHA = "a" * 64

# A document as the watcher and the redeploy have stored it since the promotion loop was built.
STORED = {
    "desired": {"version": "3", "run_id": "r3", "chosen_by": "alias"},
    "target": {
        "version": "2",
        "run_id": "r2",
        "sha256": SHA,
        "model_uri": "gs://b/m/v2",
        "event_id": "e2",
        "staged_at": AT,
    },
    "serving": {
        "version": "1",
        "run_id": "r1",
        "sha256": SHA,
        "model_uri": "gs://b/m/v1",
        "event_id": "e1",
        "deployed_at": AT,
        "revision": "predict-00001",
        "url": "https://predict",
    },
    "outbox": {
        "event_id": "e2",
        "model_name": "m",
        "model_version": "2",
        "mlflow_run_id": "r2",
        "model_uri": "gs://b/m/v2",
        "sha256": SHA,
        "previous_version": "1",
    },
    "refused": {"version": "3", "reason": "model_invalid", "detail": "not an onnx file", "at": AT},
    "claim": {"key": "3", "owner": "tick-1", "expires_at": AT},
    "deploying": None,
}


def test_deployment_document_reads_into_typed_parts_and_writes_back_unchanged() -> None:
    state = DeploymentState.from_document(STORED)

    assert state.desired == Desired("3", "r3", "alias")
    assert (state.target.version, state.serving.revision, state.outbox.previous_version) == ("2", "predict-00001", "1")
    assert state.claim == Lease("3", "tick-1", AT)
    assert state.to_document() == STORED


def test_deployment_document_fields_a_newer_writer_added_are_ignored() -> None:
    newer = {**STORED, "rollout": {"state": "baking"}, "desired": {**STORED["desired"], "note": "x"}}

    state = DeploymentState.from_document(newer)

    assert state.to_document() == STORED


def test_target_announced_again_keeps_when_in_the_document() -> None:
    later = AT + timedelta(minutes=5)
    document = {**STORED, "target": {**STORED["target"], "announced_at": later}}

    state = DeploymentState.from_document(document)

    assert state.target.last_announced == later
    assert DeploymentState.from_document(STORED).target.last_announced == AT  # never announced again: staged_at
    assert state.to_document() == document


def test_missing_deployment_document_is_the_empty_state_with_every_field_cleared() -> None:
    state = DeploymentState.from_document(None)

    assert state == DeploymentState()
    assert state.to_document() == dict.fromkeys(STORED)
    assert state.in_service is None


def test_rollout_records_the_policy_decision_with_its_share_and_numbers() -> None:
    recorded = baking_rollout(AT)

    assert (recorded.state, recorded.candidate_percent, recorded.step) == (rollout.RolloutStatus.IN_PROGRESS, 10, 0)
    assert (recorded.last_decision.action, recorded.last_decision.reason) == ("hold", "baking")
    assert [check.name for check in recorded.last_decision.checks] == [
        "server_errors",
        "feedback_worse",
        "positive_rate_shift",
    ]
    assert recorded.policy_state() == rollout.start("1", "2", AT)


def test_deployment_document_with_a_rollout_and_a_command_reads_and_writes_back_unchanged() -> None:
    command = RolloutCommand(rollout.Command.ABORT, AT, "POST /rollout")
    recorded = dataclasses.replace(baking_rollout(AT), command=command)
    document = {**STORED, "rollout": recorded.to_document()}

    state = DeploymentState.from_document(document)

    assert state.rollout == recorded
    assert state.to_document() == document
    assert type(document["rollout"]["state"]) is str  # a plain string in Firestore, not the enum's repr
    assert document["rollout"]["command"] == {"command": "abort", "at": AT, "trigger": "POST /rollout"}


def test_rollout_once_decided_consumes_the_pending_command() -> None:
    pending = dataclasses.replace(baking_rollout(AT), command=RolloutCommand(rollout.Command.ABORT, AT, "x"))
    evidence = rollout.RolloutEvidence(
        rollout.VersionCounts("1"), rollout.VersionCounts("2"), ready=True, command=pending.command.command
    )
    settings = rollout.RolloutSettings()

    ended = pending.decided(rollout.decide(pending.policy_state(), evidence, settings, AT), AT)

    assert (ended.state, ended.reason, ended.candidate_percent, ended.command) == ("aborted", "aborted", 0, None)


@pytest.mark.parametrize(
    ("parts", "versions"),
    [
        ({}, set()),
        ({"serving": "1"}, {"1"}),
        ({"serving": "1", "target": "2"}, {"1", "2"}),  # announced, not yet deployed: about to take traffic
        ({"serving": "1", "target": "1", "canary": "2"}, {"1", "2"}),  # a rollout: both take traffic
        ({"target": "2"}, {"2"}),
    ],
)
def test_versions_in_service_are_those_taking_traffic_or_about_to(parts: dict, versions: set) -> None:
    stored = DeploymentState.from_document(STORED)
    canary = Canary(
        version="x",
        run_id="r",
        sha256=SHA,
        model_uri="u",
        event_id="e",
        revision="rev",
        url="https://c",
        stable_revision="rev-1",
        percent=10,
        applied_at=AT,
    )
    state = DeploymentState(
        serving=dataclasses.replace(stored.serving, version=parts["serving"]) if "serving" in parts else None,
        target=dataclasses.replace(stored.target, version=parts["target"]) if "target" in parts else None,
        canary=dataclasses.replace(canary, version=parts["canary"]) if "canary" in parts else None,
    )

    assert state.versions_in_service == versions


def test_in_service_is_the_announced_version_else_the_serving_one() -> None:
    state = DeploymentState.from_document(STORED)

    assert state.in_service == "2"
    assert DeploymentState(serving=state.serving).in_service == "1"


@pytest.mark.parametrize(
    ("entry", "document"),
    [
        (
            HistoryEntry(HistoryKind.STAGED, "2", AT, trigger="tick", model_uri="gs://b/m/v2", event_id="e2"),
            {
                "kind": "staged",
                "version": "2",
                "at": AT,
                "trigger": "tick",
                "model_uri": "gs://b/m/v2",
                "event_id": "e2",
            },
        ),
        (
            HistoryEntry(HistoryKind.NO_PRODUCTION_VERSION, None, AT, trigger="tick"),
            {"kind": "no_production_version", "version": None, "at": AT, "trigger": "tick"},
        ),
        (
            HistoryEntry(HistoryKind.FAILED, "2", AT, event_id="e2", error="boom"),
            {"kind": "failed", "version": "2", "at": AT, "event_id": "e2", "error": "boom"},
        ),
    ],
    ids=["staged", "no-production-version", "failed"],
)
def test_history_entry_document_has_kind_version_and_at_and_only_the_fields_set(entry, document) -> None:
    stored = entry.to_document()

    assert stored == document
    assert type(stored["kind"]) is str  # a plain string in Firestore, not the enum's repr


class Step(StrEnum):
    GO = "go"


@pytest.mark.parametrize(
    ("decision", "writes"),
    [
        (Decision(Step.GO, DeploymentState()), False),
        (Decision(Step.GO, DeploymentState(desired=Desired("1", "r", "alias"))), True),
        (Decision(Step.GO, DeploymentState(), (HistoryEntry(HistoryKind.FAILED, "1", AT),)), True),
    ],
    ids=["unchanged", "state-changed", "history-only"],
)
def test_decision_writes_when_it_changes_the_state_or_records_an_entry(decision, writes: bool) -> None:
    assert decision.writes(DeploymentState()) is writes


def test_lease_is_active_until_its_expiry_only() -> None:
    lease = Lease.take("3", "tick-1", AT, seconds=60)

    assert lease.expires_at == AT + timedelta(seconds=60)
    assert lease.active(AT + timedelta(seconds=59))
    assert not lease.active(AT + timedelta(seconds=60))
