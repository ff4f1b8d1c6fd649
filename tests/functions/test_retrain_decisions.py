"""The retrain check's decisions as a table: state and observations in, one action and the state it leaves out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from tests.functions.conftest import retrain_module

pytestmark = pytest.mark.unit
d = retrain_module("retrain_decisions")

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = d.Policy(min_interval_s=3600, backoff_s=600, timeout_s=7200)
FP, OLD = "f" * 64, "0" * 64


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def execution(status: str, fp: str = FP, started: float = 7200, name: str | None = "train-1") -> object:
    return d.Execution("e1", fp, ago(started), d.Status(status), reason="r", name=name)


def state(last=None, failures: int = 0, retry_in: float | None = None) -> object:
    retry_at = None if retry_in is None else NOW + timedelta(seconds=retry_in)
    return d.RetrainState(last=last, failures=failures, next_attempt_at=retry_at)


def observed(
    trained: str | None = None, runner: tuple | None = None, objects: int = 3, fp: str = FP, running: str | None = None
) -> object:
    return d.Observed(fp, objects, trained, runner, running)


CASES = {
    "first look, data never trained on: start": (state(), observed(), d.Action.START),
    "a finished run has the fingerprint: up to date": (state(), observed(trained="run1"), d.Action.UP_TO_DATE),
    "no data at all: nothing to train": (state(), observed(objects=0), d.Action.NO_DATA),
    "changed, last start 10 min ago: debounced": (
        state(execution("succeeded", OLD, started=600)),
        observed(),
        d.Action.DEBOUNCED,
    ),
    "changed, last start 2 h ago: start": (state(execution("succeeded", OLD)), observed(), d.Action.START),
    "a run the check did not start trains on this fingerprint: wait": (
        state(execution("succeeded", OLD)),
        observed(running="demo-run"),
        d.Action.RUNNING,
    ),
    "running, runner says running: wait": (
        state(execution("running", started=60)),
        observed(runner=("train-1", d.Status.RUNNING)),
        d.Action.RUNNING,
    ),
    "running, runner says succeeded: recorded": (
        state(execution("running", started=60)),
        observed(runner=("train-1", d.Status.SUCCEEDED)),
        d.Action.SUCCEEDED,
    ),
    "running, runner says failed: recorded": (
        state(execution("running", started=60)),
        observed(runner=("train-1", d.Status.FAILED)),
        d.Action.FAILED,
    ),
    "running past the timeout: failed": (
        state(execution("running", started=7201)),
        observed(runner=("train-1", d.Status.RUNNING)),
        d.Action.FAILED,
    ),
    "the runner's answer about another execution is ignored": (
        state(execution("running", started=60)),
        observed(runner=("train-0", d.Status.FAILED)),
        d.Action.RUNNING,
    ),
    "claimed, start not recorded yet: wait": (
        state(execution("running", started=30, name=None)),
        observed(),
        d.Action.RUNNING,
    ),
    "claimed, start never recorded: failed": (
        state(execution("running", started=d.START_GRACE_S + 1, name=None)),
        observed(),
        d.Action.FAILED,
    ),
    "same fingerprint failed, retry not due: backing off": (
        state(execution("failed"), failures=2, retry_in=60),
        observed(),
        d.Action.BACKING_OFF,
    ),
    "same fingerprint failed, retry due: start": (
        state(execution("failed"), failures=2, retry_in=-1),
        observed(),
        d.Action.START,
    ),
    "a new fingerprint is not held by an old failure's backoff": (
        state(execution("failed", OLD), failures=3, retry_in=3000),
        observed(),
        d.Action.START,
    ),
    "a new fingerprint is still debounced after a recent failed start": (
        state(execution("failed", OLD, started=60), failures=1, retry_in=3000),
        observed(),
        d.Action.DEBOUNCED,
    ),
    "succeeded without a tagged run: not started again": (
        state(execution("succeeded")),
        observed(),
        d.Action.UP_TO_DATE,
    ),
}


@pytest.mark.parametrize(("before", "seen", "expected"), CASES.values(), ids=CASES.keys())
def test_decide_table(before, seen, expected) -> None:
    decision = d.decide(before, seen, POLICY, NOW, "e2")

    assert decision.action is expected, decision.detail
    assert decision.detail
    writes = expected in (d.Action.START, d.Action.SUCCEEDED, d.Action.FAILED)
    assert decision.writes(before) is writes


@pytest.mark.parametrize(
    ("before", "seen", "cancelled"),
    [
        (state(execution("running", started=7201)), observed(runner=("train-1", d.Status.RUNNING)), "train-1"),
        (state(execution("running", started=60)), observed(runner=("train-1", d.Status.FAILED)), None),
        (state(execution("running", started=60)), observed(runner=("train-1", d.Status.RUNNING)), None),
    ],
    ids=["timed-out: stopped", "failed on its own: nothing to stop", "running: left alone"],
)
def test_decide_cancels_only_an_execution_it_gives_up_on(before, seen, cancelled) -> None:
    assert d.decide(before, seen, POLICY, NOW, "e2").cancel == cancelled


def test_decide_start_claims_the_execution_running_without_a_name_yet() -> None:
    decision = d.decide(state(execution("succeeded", OLD)), observed(), POLICY, NOW, "e2")

    last = decision.state.last
    assert (last.id, last.fingerprint, last.status, last.name, last.started_at) == ("e2", FP, "running", None, NOW)
    assert OLD in last.reason
    assert decision.history == ()  # the `started` entry is written with the runner's name


def test_decide_start_after_a_claim_is_waiting_not_a_second_start() -> None:
    claimed = d.decide(state(), observed(), POLICY, NOW, "e1").state

    again = d.decide(claimed, observed(), POLICY, NOW, "e2")

    assert again.action is d.Action.RUNNING
    assert not again.writes(claimed)


@pytest.mark.parametrize(("failures", "wait_s"), [(1, 600), (2, 1200), (3, 2400), (8, 76800), (9, 86400), (60, 86400)])
def test_failure_sets_retry_at_doubling_backoff_capped_at_a_day(failures: int, wait_s: float) -> None:
    before = state(execution("running", started=60), failures=failures - 1)

    decision = d.decide(before, observed(runner=("train-1", d.Status.FAILED)), POLICY, NOW, "e2")

    assert decision.state.failures == failures
    assert decision.state.next_attempt_at == NOW + timedelta(seconds=wait_s)
    (entry,) = decision.history
    assert (entry.kind, entry.execution, entry.fingerprint) == (d.Kind.FAILED, "e1", FP)


def test_retry_of_the_same_fingerprint_keeps_counting_failures_and_a_new_one_starts_from_zero() -> None:
    failed = state(execution("failed"), failures=2, retry_in=-1)

    retry = d.decide(failed, observed(), POLICY, NOW, "e2")
    other = d.decide(failed, observed(fp=OLD), POLICY, NOW, "e2")

    assert (retry.state.failures, other.state.failures) == (2, 0)
    assert retry.state.next_attempt_at is None


def test_success_resets_failures_and_records_an_entry() -> None:
    before = state(execution("running", started=60), failures=2)

    decision = d.decide(before, observed(runner=("train-1", d.Status.SUCCEEDED)), POLICY, NOW, "e2")

    assert (decision.state.failures, decision.state.next_attempt_at, decision.state.last.status) == (
        0,
        None,
        "succeeded",
    )
    assert [e.kind for e in decision.history] == [d.Kind.SUCCEEDED]


def test_started_records_the_name_once_and_only_for_the_claimed_execution() -> None:
    claimed = d.decide(state(), observed(), POLICY, NOW, "e1").state

    first = d.started(claimed, "e1", "train-00001", NOW)
    stale = d.started(first.state, "e1", "train-00002", NOW)
    other = d.started(claimed, "e9", "train-00003", NOW)

    assert first.state.last.name == "train-00001"
    assert [(e.kind, e.name) for e in first.history] == [(d.Kind.STARTED, "train-00001")]
    assert first.history[0].reason  # why it started
    assert not stale.writes(first.state)
    assert not other.writes(claimed)


def test_start_failed_is_a_failure_with_backoff() -> None:
    claimed = d.decide(state(), observed(), POLICY, NOW, "e1").state

    decision = d.start_failed(claimed, "e1", "image not found", POLICY, NOW)

    assert decision.action is d.Action.FAILED
    assert (decision.state.last.status, decision.state.failures) == ("failed", 1)
    assert decision.state.next_attempt_at == NOW + timedelta(seconds=600)
    assert "image not found" in decision.history[0].detail
    # The next tick with the same data backs off instead of starting again.
    assert d.decide(decision.state, observed(), POLICY, NOW, "e2").action is d.Action.BACKING_OFF
    later = NOW + timedelta(seconds=3601)
    assert d.decide(decision.state, observed(), POLICY, later, "e2").action is d.Action.START


def test_state_document_round_trips() -> None:
    original = dataclasses.replace(
        state(execution("failed"), failures=1, retry_in=60),
        export=d.FeedbackExport(watermark=NOW, at=NOW, uri="gs://b/p/feedback/f.jsonl", rows=3),
    )

    assert d.RetrainState.from_document(original.to_document()) == original
    assert d.RetrainState.from_document(None) == d.RetrainState()


def test_exported_advances_only_the_watermark_it_read() -> None:
    read = d.FeedbackExport()
    done = d.FeedbackExport(watermark=NOW, at=NOW, uri="gs://b/f.jsonl", rows=2)

    first = d.exported(state(), read, done, "2 answers")
    raced = d.exported(first.state, read, done, "2 answers")

    assert first.state.export == done
    assert [e.kind for e in first.history] == [d.Kind.EXPORTED]
    assert not raced.writes(first.state)
