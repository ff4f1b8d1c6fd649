"""The rollout policy as a table: (state, evidence, settings, now) -> (action, reason, state, share). No server."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sentiment_core.config import ConfigError
from sentiment_core.rollout import (
    Command,
    Reason,
    RolloutAction,
    RolloutDecision,
    RolloutEvidence,
    RolloutSettings,
    RolloutState,
    RolloutStatus,
    VersionCounts,
    decide,
    shift_beyond_margin,
    start,
    where_events_fell,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
A_MINUTE = T0 + timedelta(seconds=60)
BAKED = T0 + timedelta(seconds=901)
T1 = T0 + timedelta(hours=1)  # the second step began
T1_BAKED = T1 + timedelta(seconds=900)
LATE = T0 + timedelta(seconds=86_400)
DEFAULT = RolloutSettings()
IMMEDIATE = RolloutSettings(steps=(100,))
AT_10 = start("1", "2", T0)
AT_50 = dataclasses.replace(AT_10, step=1, step_started_at=T1)


def evidence(
    feedback: int = 500,
    accuracy: float = 0.95,
    positive_rate: float = 0.5,
    errors: int = 0,
    *,
    ready: bool = True,
    command: Command | None = None,
    stable_accuracy: float = 0.95,
) -> RolloutEvidence:
    """The candidate at a tenth of the traffic, one prediction in five answered; S at the rest, 95% right."""
    predictions = feedback * 5 or 1000
    stable = VersionCounts(
        "1",
        predictions * 9,
        predictions * 9 // 2,
        feedback * 9,
        round(feedback * 9 * stable_accuracy),
    )
    candidate = VersionCounts(
        "2", predictions, round(predictions * positive_rate), feedback, round(feedback * accuracy), errors
    )
    return RolloutEvidence(stable, candidate, ready, command)


def ended(state: RolloutState, status: RolloutStatus, reason: Reason, now: datetime) -> RolloutState:
    return dataclasses.replace(state, status=status, reason=reason, ended_at=now)


COMPLETE, ROLL_BACK, HOLD, ADVANCE = (
    RolloutAction.COMPLETE,
    RolloutAction.ROLL_BACK,
    RolloutAction.HOLD,
    RolloutAction.ADVANCE,
)
COMPLETED, ROLLED_BACK, ABORTED = RolloutStatus.COMPLETED, RolloutStatus.ROLLED_BACK, RolloutStatus.ABORTED


def rolls_back(state: RolloutState, reason: Reason, now: datetime, status: RolloutStatus = ROLLED_BACK) -> tuple:
    return ROLL_BACK, reason, ended(state, status, reason, now), 0


def completes(state: RolloutState, reason: Reason, now: datetime) -> tuple:
    return COMPLETE, reason, ended(state, COMPLETED, reason, now), 100


def advances(state: RolloutState, now: datetime) -> tuple:
    return ADVANCE, Reason.EVIDENCE_HOLDS, dataclasses.replace(state, step=state.step + 1, step_started_at=now), 50


TABLE = [
    pytest.param(
        AT_10,
        evidence(feedback=0, ready=False),
        IMMEDIATE,
        T0,
        completes(AT_10, Reason.IMMEDIATE, T0),
        id="steps-100-completes-at-once-as-the-immediate-switch",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=0),
        DEFAULT,
        A_MINUTE,
        (HOLD, Reason.BAKING, AT_10, 10),
        id="first-step-holds-until-baked",
    ),
    pytest.param(
        AT_10,
        evidence(ready=False),
        DEFAULT,
        BAKED,
        (HOLD, Reason.NOT_READY, AT_10, 10),
        id="candidate-not-ready-holds",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=499),
        DEFAULT,
        BAKED,
        (HOLD, Reason.AWAITING_FEEDBACK, AT_10, 10),
        id="baked-first-step-holds-until-half-the-min-feedback",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=500),
        DEFAULT,
        BAKED,
        advances(AT_10, BAKED),
        id="baked-first-step-with-its-feedback-advances-and-restarts-the-bake",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=500, accuracy=0.97),
        DEFAULT,
        BAKED,
        advances(AT_10, BAKED),
        id="better-candidate-advances",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=1000),
        DEFAULT,
        T1 + timedelta(seconds=899),
        (HOLD, Reason.BAKING, AT_50, 50),
        id="second-step-bakes-from-its-own-start",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=999),
        DEFAULT,
        T1_BAKED,
        (HOLD, Reason.AWAITING_FEEDBACK, AT_50, 50),
        id="last-partial-step-holds-until-min-feedback",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=1000),
        DEFAULT,
        T1_BAKED,
        completes(AT_50, Reason.EVIDENCE_HOLDS, T1_BAKED),
        id="last-partial-step-baked-with-min-feedback-completes",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=1000),
        RolloutSettings(steps=(10, 100)),
        BAKED,
        completes(AT_10, Reason.EVIDENCE_HOLDS, BAKED),
        id="one-partial-step-asks-all-the-min-feedback-then-completes",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=0),
        RolloutSettings(min_feedback=0),
        BAKED,
        advances(AT_10, BAKED),
        id="min-feedback-0-advances-once-baked",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=200, accuracy=0.85),
        DEFAULT,
        A_MINUTE,
        rolls_back(AT_10, Reason.FEEDBACK_WORSE, A_MINUTE),
        id="worse-feedback-rolls-back-before-the-bake-ends",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=600, accuracy=0.88),
        DEFAULT,
        T1_BAKED,
        rolls_back(AT_50, Reason.FEEDBACK_WORSE, T1_BAKED),
        id="worse-feedback-rolls-back-from-the-second-step",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=200, accuracy=0.85, ready=False),
        DEFAULT,
        BAKED,
        rolls_back(AT_10, Reason.FEEDBACK_WORSE, BAKED),
        id="evidence-counts-even-while-not-ready",
    ),
    pytest.param(
        AT_10,
        evidence(positive_rate=0.6),
        DEFAULT,
        BAKED,
        rolls_back(AT_10, Reason.POSITIVE_RATE_SHIFT, BAKED),
        id="positive-rate-up-10-points-rolls-back",
    ),
    pytest.param(
        AT_10,
        evidence(positive_rate=0.4),
        DEFAULT,
        BAKED,
        rolls_back(AT_10, Reason.POSITIVE_RATE_SHIFT, BAKED),
        id="positive-rate-down-10-points-rolls-back",
    ),
    pytest.param(
        AT_10,
        evidence(positive_rate=0.515),
        DEFAULT,
        BAKED,
        advances(AT_10, BAKED),
        id="positive-rate-shift-within-the-margin-advances",
    ),
    pytest.param(
        AT_10,
        evidence(errors=10),
        DEFAULT,
        BAKED,
        rolls_back(AT_10, Reason.SERVER_ERRORS, BAKED),
        id="server-errors-on-the-candidate-only-roll-back",
    ),
    pytest.param(
        AT_10,
        evidence(errors=10, accuracy=0.85, positive_rate=0.6),
        DEFAULT,
        BAKED,
        rolls_back(AT_10, Reason.SERVER_ERRORS, BAKED),
        id="several-failed-checks-report-server-errors-first",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=100),
        DEFAULT,
        LATE,
        rolls_back(AT_10, Reason.MAX_TIME, LATE),
        id="not-completed-within-max-time-rolls-back",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=1000),
        DEFAULT,
        LATE,
        rolls_back(AT_50, Reason.MAX_TIME, LATE),
        id="max-time-comes-before-completing",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=200, accuracy=0.85),
        DEFAULT,
        LATE,
        rolls_back(AT_10, Reason.FEEDBACK_WORSE, LATE),
        id="a-failed-check-past-max-time-gives-its-own-reason",
    ),
    pytest.param(
        AT_50,
        evidence(feedback=0, command=Command.ABORT),
        DEFAULT,
        T1,
        rolls_back(AT_50, Reason.ABORTED, T1, ABORTED),
        id="abort-command-rolls-back-as-aborted",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=0, command=Command.COMPLETE),
        DEFAULT,
        T0,
        completes(AT_10, Reason.COMPLETED_BY_OPERATOR, T0),
        id="complete-command-completes-at-once",
    ),
    pytest.param(
        AT_10,
        evidence(feedback=200, accuracy=0.85, command=Command.COMPLETE),
        DEFAULT,
        T0,
        completes(AT_10, Reason.COMPLETED_BY_OPERATOR, T0),
        id="complete-command-overrides-failed-checks",
    ),
    pytest.param(
        ended(AT_50, COMPLETED, Reason.EVIDENCE_HOLDS, T1),
        evidence(feedback=200, accuracy=0.85),
        DEFAULT,
        LATE,
        (HOLD, Reason.FINISHED, ended(AT_50, COMPLETED, Reason.EVIDENCE_HOLDS, T1), 100),
        id="completed-rollout-decides-nothing",
    ),
    pytest.param(
        ended(AT_10, ROLLED_BACK, Reason.FEEDBACK_WORSE, T1),
        evidence(command=Command.COMPLETE),
        DEFAULT,
        LATE,
        (HOLD, Reason.FINISHED, ended(AT_10, ROLLED_BACK, Reason.FEEDBACK_WORSE, T1), 0),
        id="rolled-back-rollout-ignores-commands",
    ),
    pytest.param(
        ended(AT_10, ABORTED, Reason.ABORTED, T1),
        evidence(),
        DEFAULT,
        LATE,
        (HOLD, Reason.FINISHED, ended(AT_10, ABORTED, Reason.ABORTED, T1), 0),
        id="aborted-rollout-decides-nothing",
    ),
]


@pytest.mark.parametrize(("state", "seen", "settings", "now", "expected"), TABLE)
def test_decide_transition(
    state: RolloutState,
    seen: RolloutEvidence,
    settings: RolloutSettings,
    now: datetime,
    expected: tuple[RolloutAction, Reason, RolloutState, int],
) -> None:
    decision = decide(state, seen, settings, now)

    assert (decision.action, decision.reason, decision.state, decision.percent) == expected


def test_decide_rollback_records_counts_rates_statistic_and_threshold() -> None:
    decision = decide(AT_10, evidence(feedback=200, accuracy=0.85), DEFAULT, BAKED)

    document = decision.to_document()

    feedback = document["checks"]["feedback_worse"]
    assert (document["action"], document["reason"], document["percent"]) == ("roll_back", "feedback_worse", 0)
    assert (feedback["candidate_events"], feedback["candidate_total"]) == (30, 200)
    assert (feedback["stable_events"], feedback["stable_total"]) == (90, 1800)
    assert (feedback["candidate_rate"], feedback["stable_rate"]) == (0.15, 0.05)
    assert feedback["threshold"] == pytest.approx(math.log(1 / 0.04))  # 80% of ROLLOUT_ALPHA
    assert feedback["statistic"] >= feedback["threshold"]
    assert feedback["failed"] is True
    assert set(document["checks"]) == {"server_errors", "feedback_worse", "positive_rate_shift"}
    assert "feedback_worse: statistic" in document["detail"]


def test_decide_hold_names_what_it_waits_for() -> None:
    assert decide(AT_10, evidence(feedback=120), DEFAULT, BAKED).detail == "120 of 500 feedback answers"
    assert decide(AT_10, evidence(), DEFAULT, A_MINUTE).detail == "60 of 900 s at this step"


def test_decide_evidence_of_other_versions_is_refused() -> None:
    other = dataclasses.replace(evidence(), candidate=VersionCounts("3"))

    with pytest.raises(ValueError, match="versions 1/3 for the rollout of 1/2"):
        decide(AT_10, other, DEFAULT, BAKED)


@pytest.mark.parametrize(
    ("steps", "required"),
    [
        ((10, 50, 100), [500, 1000]),
        ((10, 100), [1000]),
        ((5, 25, 50, 100), [334, 667, 1000]),
    ],
)
def test_settings_min_feedback_is_shared_by_the_partial_steps(steps: tuple[int, ...], required: list[int]) -> None:
    settings = RolloutSettings(steps=steps)

    assert [settings.feedback_required(step) for step in range(settings.partial_steps)] == required


def test_settings_alpha_is_split_between_the_checks() -> None:
    settings = RolloutSettings(alpha=0.05)

    shares = (settings.alpha_feedback, 2 * settings.alpha_positive_rate_side, settings.alpha_server_errors)

    assert shares == pytest.approx((0.04, 0.005, 0.005))
    assert sum(shares) == pytest.approx(settings.alpha)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, RolloutSettings(steps=(10, 50, 100), bake_s=900, min_feedback=1000, alpha=0.05, max_s=86_400)),
        ({"ROLLOUT_STEPS": "100"}, RolloutSettings(steps=(100,))),
        ({"ROLLOUT_STEPS": " 5, 25,50 ,100 "}, RolloutSettings(steps=(5, 25, 50, 100))),
        (
            {
                "ROLLOUT_STEPS": "50,100",
                "ROLLOUT_BAKE_S": "5",
                "ROLLOUT_MIN_FEEDBACK": "20",
                "ROLLOUT_ALPHA": "0.1",
                "ROLLOUT_MAX_S": "600",
            },
            RolloutSettings(steps=(50, 100), bake_s=5, min_feedback=20, alpha=0.1, max_s=600),
        ),
        ({"ROLLOUT_STEPS": "100", "ROLLOUT_BAKE_S": "3600", "ROLLOUT_MAX_S": "60"}, None),
    ],
    ids=["defaults", "immediate-switch", "spaces-allowed", "short-local-settings", "no-partial-step-no-time-bound"],
)
def test_settings_from_env_parses_rollout_variables(env: dict[str, str], expected: RolloutSettings | None) -> None:
    settings = RolloutSettings.from_env(env)

    if expected is None:
        assert settings.steps == (100,)
    else:
        assert settings == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ROLLOUT_STEPS": "10,50"}, "ROLLOUT_STEPS must end with 100"),
        ({"ROLLOUT_STEPS": "50,10,100"}, "ROLLOUT_STEPS must increase"),
        ({"ROLLOUT_STEPS": "10,10,100"}, "ROLLOUT_STEPS must increase"),
        ({"ROLLOUT_STEPS": "0,100"}, "each in 1..100"),
        ({"ROLLOUT_STEPS": "10,150"}, "each in 1..100"),
        ({"ROLLOUT_STEPS": "10,half,100"}, "ROLLOUT_STEPS must be whole percents"),
        ({"ROLLOUT_STEPS": "12.5,100"}, "ROLLOUT_STEPS must be whole percents"),
        ({"ROLLOUT_STEPS": ""}, "ROLLOUT_STEPS must be whole percents"),
        ({"ROLLOUT_BAKE_S": "-1"}, "ROLLOUT_BAKE_S must be between"),
        ({"ROLLOUT_BAKE_S": "soon"}, "ROLLOUT_BAKE_S must be a number"),
        ({"ROLLOUT_MIN_FEEDBACK": "10.5"}, "ROLLOUT_MIN_FEEDBACK must be a whole number"),
        ({"ROLLOUT_MIN_FEEDBACK": "-1"}, "ROLLOUT_MIN_FEEDBACK must be between"),
        ({"ROLLOUT_ALPHA": "0"}, "ROLLOUT_ALPHA must be between"),
        ({"ROLLOUT_ALPHA": "0.6"}, "ROLLOUT_ALPHA must be between"),
        ({"ROLLOUT_MAX_S": "1200"}, "ROLLOUT_MAX_S (1200) must be at least ROLLOUT_BAKE_S (900) times the 2 steps"),
        ({"ROLLOUT_MAX_S": "30"}, "ROLLOUT_MAX_S must be between 60 and 604800, got 30"),
        ({"ROLLOUT_MIN_FEEDBACK": "1e6"}, "ROLLOUT_MIN_FEEDBACK must be between 0 and 100000"),
    ],
)
def test_settings_from_env_malformed_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RolloutSettings.from_env(env)


@pytest.mark.parametrize(
    "fields",
    [{"steps": (10, 50)}, {"steps": (50, 10, 100)}, {"steps": ()}, {"max_s": 100.0}],
    ids=["no-100", "decreasing", "empty", "max-time-below-the-bakes"],
)
def test_settings_built_directly_are_checked_too(fields: dict) -> None:
    with pytest.raises(ValueError, match="steps"):
        RolloutSettings(**fields)


def test_state_document_round_trip_keeps_every_field() -> None:
    state = ended(AT_50, ROLLED_BACK, Reason.FEEDBACK_WORSE, T1_BAKED)

    document = state.to_document()

    assert (document["status"], document["reason"], document["step"]) == ("rolled_back", "feedback_worse", 1)
    assert RolloutState.from_document(document) == state
    assert RolloutState.from_document({**AT_10.to_document(), "written_by": "a newer watcher"}) == AT_10


@pytest.mark.parametrize(
    "fields",
    [{"positive": 11, "predictions": 10}, {"correct": 3, "feedback": 2}, {"server_errors": -1}],
    ids=["more-positive-than-predictions", "more-correct-than-feedback", "negative"],
)
def test_version_counts_inconsistent_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError, match="inconsistent counts for version 2"):
        VersionCounts("2", **fields)


@pytest.mark.parametrize(
    "statistic",
    [
        where_events_fell(0, 0, 5, 100, 0.05),
        where_events_fell(3, 100, 0, 0, 0.05),
        where_events_fell(0, 100, 0, 900, 0.05),
        shift_beyond_margin(0, 0, 50, 100, 0.02, 0.05),
        shift_beyond_margin(50, 100, 0, 0, 0.02, 0.05),
    ],
    ids=["no-candidate-answers", "no-stable-answers", "no-events", "no-candidate-predictions", "no-stable-ones"],
)
def test_checks_without_counts_on_both_sides_are_no_evidence(statistic: float) -> None:
    assert statistic == 0.0


# Properties: what must hold for any counts, not only the table's. No deadline: the machine may be busy.
PROPERTY = settings(deadline=None)
totals = st.integers(min_value=1, max_value=100_000)


@PROPERTY
@given(total_n=totals, total_s=totals, data=st.data())
def test_where_events_fell_candidate_no_worse_than_stable_is_never_evidence(
    total_n: int, total_s: int, data: st.DataObject
) -> None:
    events_s = data.draw(st.integers(0, total_s))
    events_n = data.draw(st.integers(0, math.floor(total_n * events_s / total_s)))  # N's rate <= S's

    assert where_events_fell(events_n, total_n, events_s, total_s, 0.05) <= 0


@PROPERTY
@given(total_n=totals, total_s=totals, data=st.data())
def test_where_events_fell_one_more_candidate_event_raises_the_statistic(
    total_n: int, total_s: int, data: st.DataObject
) -> None:
    events_n = data.draw(st.integers(0, total_n - 1))
    events_s = data.draw(st.integers(0, total_s))

    before = where_events_fell(events_n, total_n, events_s, total_s, 0.05)

    assert where_events_fell(events_n + 1, total_n, events_s, total_s, 0.05) > before


@PROPERTY
@given(total_n=totals, total_s=totals, data=st.data())
def test_shift_beyond_margin_is_symmetric_in_the_direction(total_n: int, total_s: int, data: st.DataObject) -> None:
    yes_n = data.draw(st.integers(0, total_n))
    yes_s = data.draw(st.integers(0, total_s))

    up = shift_beyond_margin(yes_n, total_n, yes_s, total_s, 0.02, 0.05)

    assert shift_beyond_margin(total_n - yes_n, total_n, total_s - yes_s, total_s, 0.02, 0.05) == pytest.approx(up)


@PROPERTY
@given(
    step=st.integers(0, 1),
    minutes=st.integers(0, 2 * 24 * 60),
    feedback=st.integers(0, 2000),
    accuracy=st.floats(0.5, 1.0),
    positive_rate=st.floats(0.0, 1.0),
    errors=st.integers(0, 50),
    ready=st.booleans(),
    command=st.sampled_from([None, Command.ABORT, Command.COMPLETE]),
)
def test_decide_any_evidence_gives_a_consistent_decision(
    step: int,
    minutes: int,
    feedback: int,
    accuracy: float,
    positive_rate: float,
    errors: int,
    ready: bool,
    command: Command | None,
) -> None:
    state = AT_10 if step == 0 else AT_50
    now = (T0 if step == 0 else T1) + timedelta(minutes=minutes)
    seen = evidence(feedback, accuracy, positive_rate, errors, ready=ready, command=command)

    decision: RolloutDecision = decide(state, seen, DEFAULT, now)

    assert decision == decide(state, seen, DEFAULT, now)  # pure: same inputs, same decision
    assert decision.percent == decision.state.percent(DEFAULT)
    match decision.action:
        case RolloutAction.HOLD:
            assert decision.state == state
        case RolloutAction.ADVANCE:
            assert (decision.state.step, decision.state.step_started_at, decision.percent) == (step + 1, now, 50)
            assert seen.candidate.feedback >= DEFAULT.feedback_required(step)
        case RolloutAction.COMPLETE:
            assert (decision.state.status, decision.percent) == (COMPLETED, 100)
        case RolloutAction.ROLL_BACK:
            assert decision.state.status in (ROLLED_BACK, ABORTED)
            assert decision.percent == 0
    if decision.action is not RolloutAction.HOLD:
        assert decision.state.ended_at == (None if decision.action is RolloutAction.ADVANCE else now)


@pytest.mark.parametrize(
    ("events_n", "total_n", "events_s", "total_s"),
    [(30, 200, 90, 1800), (0, 500, 40, 4500), (12, 1000, 3, 1000), (1, 1, 0, 9)],
)
def test_where_events_fell_is_the_binomial_likelihood_ratio_of_the_split(
    events_n: int, total_n: int, events_s: int, total_s: int
) -> None:
    """Checked against scipy's binomial: where the events fell, given how many there were."""
    share = total_n / (total_n + total_s)
    rate_s = (events_s + 1) / (total_s + 2)
    ratio = (rate_s + 0.05) / rate_s
    alternative = ratio * share / (ratio * share + 1 - share)
    events = events_n + events_s

    expected = stats.binom.logpmf(events_n, events, alternative) - stats.binom.logpmf(events_n, events, share)

    assert where_events_fell(events_n, total_n, events_s, total_s, 0.05) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("yes_n", "total_n", "yes_s", "total_s"),
    [(600, 1000, 4500, 9000), (400, 1000, 4500, 9000), (51, 100, 450, 900)],
)
def test_shift_beyond_margin_is_the_gaussian_likelihood_ratio_of_the_difference(
    yes_n: int, total_n: int, yes_s: int, total_s: int
) -> None:
    """Checked against scipy's normal: the difference at margin + shift against at the margin, same side."""
    rate_n, rate_s = (yes_n + 1) / (total_n + 2), (yes_s + 1) / (total_s + 2)
    sd = math.sqrt(rate_n * (1 - rate_n) / (total_n + 1) + rate_s * (1 - rate_s) / (total_s + 1))
    difference = abs(rate_n - rate_s)

    expected = stats.norm.logpdf(difference, 0.07, sd) - stats.norm.logpdf(difference, 0.02, sd)

    assert shift_beyond_margin(yes_n, total_n, yes_s, total_s, 0.02, 0.05) == pytest.approx(expected)


def test_counts_since_a_baseline_keep_late_answers_as_feedback_only() -> None:
    before = VersionCounts("2", predictions=100, positive=60, feedback=40, correct=30)
    now = VersionCounts("2", predictions=100, positive=60, feedback=45, correct=33)

    after = now.since(before)

    assert after == VersionCounts("2", predictions=0, positive=0, feedback=5, correct=3)
    assert now.since(None) is now
