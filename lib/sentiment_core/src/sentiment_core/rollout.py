"""Progressive rollout policy: decide(state, evidence, settings, now) -> RolloutDecision, a pure function.

A new production version N takes the traffic of the stable version S step by step (`ROLLOUT_STEPS`). On every
tick the watcher counts, for N and for S over the same window (since the rollout began), predictions, positive
answers, feedback answers, correct answers and server errors, and asks `decide` whether N holds, advances,
completes or is rolled back. No I/O and no clock in here; docs/promotion.md ("Progressive rollout") has the state
diagram, the policy table and the figures of `bench/rollout.py`, which runs this code.

The checks are sequential tests: each is a likelihood ratio that is a (super)martingale while N is as good as S,
so by Ville's inequality it crosses 1/alpha with probability at most alpha however often it is looked at, and
looking on every tick costs nothing. ROLLOUT_ALPHA is split between them (union bound):
- feedback (80% of alpha): which version each wrong answer came from. With equal error rates a wrong answer
  is N's with probability N's share of the feedback (binomial, conditioned on the number of wrong answers; exact
  on counts, so it needs no normal approximation near 100% accuracy). Alternative: N wrong FEEDBACK_DROP more
  often than S. One-sided: a better N never rolls back.
- positive rate (10%, half to each side): N's positive rate minus S's on the same traffic, beyond
  a tolerated POSITIVE_RATE_MARGIN (a better model may shift it a little), Gaussian SPRT on the difference.
- server errors (10%): which version each failed request came from, as for the feedback, alternative: N fails
  SERVER_ERROR_EXCESS more of its requests than S.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sentiment_core import config

# Design constants of the tests (docs/promotion.md, "Progressive rollout", says why; bench/rollout.py measures).
FEEDBACK_DROP = 0.05  # the accuracy drop the feedback test is tuned for (the SPRT's alternative)
POSITIVE_RATE_MARGIN = 0.02  # a shift of the positive rate this small is not evidence against N
POSITIVE_RATE_SHIFT = 0.05  # the test is tuned for a shift of MARGIN + SHIFT (7 points)
SERVER_ERROR_EXCESS = 0.01  # N failing 1 request in 100 more than S
FEEDBACK_SHARE, POSITIVE_RATE_SHARE, SERVER_ERRORS_SHARE = 0.8, 0.1, 0.1  # of ROLLOUT_ALPHA

DEFAULT_STEPS = "10,50,100"
DEFAULT_BAKE_S = 900.0  # 15 scheduler ticks at each step: a crash loop or a cold-start failure shows by then
DEFAULT_MIN_FEEDBACK = 1000  # feedback answers on N before it may complete: 5-point drops caught >= 95%
DEFAULT_ALPHA = 0.05
DEFAULT_MAX_S = 86_400.0  # a whole day of traffic; a candidate that has not earned its place by then goes back
WEEK_S = 7 * 86_400.0  # the longest bake and the longest rollout accepted


class RolloutStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"  # N serves 100%, S drained
    ROLLED_BACK = "rolled_back"  # the policy sent all traffic back to S
    ABORTED = "aborted"  # a person sent all traffic back to S


class RolloutAction(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"  # to the next step's share
    COMPLETE = "complete"  # N to 100%, S drained
    ROLL_BACK = "roll_back"  # S to 100%, N drained


class Reason(StrEnum):
    """Why the decision was taken; a rollback's reason becomes the tag `deployment_reason`."""

    FEEDBACK_WORSE = "feedback_worse"
    POSITIVE_RATE_SHIFT = "positive_rate_shift"
    SERVER_ERRORS = "server_errors"
    MAX_TIME = "max_time"
    ABORTED = "aborted"
    SUPERSEDED = "superseded"  # another version was promoted during the rollout (the watcher ends it)
    NOT_READY = "not_ready"
    BAKING = "baking"  # the step's minimum time has not passed
    AWAITING_FEEDBACK = "awaiting_feedback"  # fewer feedback answers on N than this step asks for
    EVIDENCE_HOLDS = "evidence_holds"  # every check passed, time and feedback are enough
    IMMEDIATE = "immediate"  # ROLLOUT_STEPS=100: the switch happens at once
    COMPLETED_BY_OPERATOR = "completed_by_operator"
    FINISHED = "finished"  # the rollout is over; nothing to decide


class Command(StrEnum):
    """What a person asked for (`POST /rollout`, or moving the alias back to S, which is an abort)."""

    ABORT = "abort"
    COMPLETE = "complete"


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """ROLLOUT_* of the watcher, and the tests' design constants (not settings: the docs say why)."""

    steps: tuple[int, ...] = (10, 50, 100)  # percent of traffic to N, increasing, the last 100
    bake_s: float = DEFAULT_BAKE_S
    min_feedback: int = DEFAULT_MIN_FEEDBACK
    alpha: float = DEFAULT_ALPHA
    max_s: float = DEFAULT_MAX_S
    feedback_drop: float = FEEDBACK_DROP
    positive_rate_margin: float = POSITIVE_RATE_MARGIN
    positive_rate_shift: float = POSITIVE_RATE_SHIFT
    server_error_excess: float = SERVER_ERROR_EXCESS

    def __post_init__(self) -> None:
        if not self.steps or self.steps[-1] != 100:
            raise ValueError(f"steps must end with 100, got {self.steps}")
        if any(not 0 < step <= 100 for step in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing percents in 1..100, got {self.steps}")
        if self.max_s < self.bake_s * self.partial_steps:
            raise ValueError(f"max_s {self.max_s:g} leaves no time for {self.partial_steps} steps of {self.bake_s:g} s")

    @property
    def partial_steps(self) -> int:
        """Steps that split the traffic (all but the last, 100)."""
        return len(self.steps) - 1

    def feedback_required(self, step: int) -> int:
        """Feedback answers on N, since the rollout began, before it may leave `step`: min_feedback shared
        evenly by the partial steps, so the evidence at completion does not depend on how many there are."""
        return math.ceil(self.min_feedback * (step + 1) / self.partial_steps)

    @property
    def alpha_feedback(self) -> float:
        return self.alpha * FEEDBACK_SHARE

    @property
    def alpha_positive_rate_side(self) -> float:
        return self.alpha * POSITIVE_RATE_SHARE / 2  # the shift is tested in both directions

    @property
    def alpha_server_errors(self) -> float:
        return self.alpha * SERVER_ERRORS_SHARE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RolloutSettings:
        """ROLLOUT_STEPS, ROLLOUT_BAKE_S, ROLLOUT_MIN_FEEDBACK, ROLLOUT_ALPHA, ROLLOUT_MAX_S; ConfigError names the
        variable to fix."""
        steps = _steps(config.optional("ROLLOUT_STEPS", DEFAULT_STEPS, env))
        bake_s = config.number("ROLLOUT_BAKE_S", DEFAULT_BAKE_S, 0.0, WEEK_S, env)
        min_feedback = config.number("ROLLOUT_MIN_FEEDBACK", DEFAULT_MIN_FEEDBACK, 0, 100_000, env)
        if not min_feedback.is_integer():
            raise config.ConfigError(f"ROLLOUT_MIN_FEEDBACK must be a whole number, got {min_feedback:g}")
        alpha = config.number("ROLLOUT_ALPHA", DEFAULT_ALPHA, 0.0001, 0.5, env)
        max_s = config.number("ROLLOUT_MAX_S", DEFAULT_MAX_S, 60.0, WEEK_S, env)
        if max_s < bake_s * (len(steps) - 1):
            raise config.ConfigError(
                f"ROLLOUT_MAX_S ({max_s:g}) must be at least ROLLOUT_BAKE_S ({bake_s:g}) times the {len(steps) - 1} "
                "steps before 100, or every rollout would be rolled back for lack of time"
            )
        return cls(steps=steps, bake_s=bake_s, min_feedback=int(min_feedback), alpha=alpha, max_s=max_s)


def _steps(raw: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise config.ConfigError(f"ROLLOUT_STEPS must be whole percents separated by commas, got {raw!r}") from exc
    if any(not 0 < step <= 100 for step in steps) or list(steps) != sorted(set(steps)):
        raise config.ConfigError(f"ROLLOUT_STEPS must increase, each in 1..100, got {raw!r}")
    if steps[-1] != 100:
        raise config.ConfigError(f"ROLLOUT_STEPS must end with 100 (the candidate takes all traffic), got {raw!r}")
    return steps


@dataclasses.dataclass(frozen=True)
class VersionCounts:
    """What one version did since the rollout began (the same window for both versions)."""

    version: str
    predictions: int = 0
    positive: int = 0  # predictions the model answered positive
    feedback: int = 0  # feedback answers on its predictions
    correct: int = 0  # feedback answers that agreed with the model
    server_errors: int = 0  # requests that failed with a 5xx (they stored no prediction)

    def __post_init__(self) -> None:
        counts = (self.predictions, self.positive, self.feedback, self.correct, self.server_errors)
        if min(counts) < 0 or self.positive > self.predictions or self.correct > self.feedback:
            raise ValueError(f"inconsistent counts for version {self.version}: {self}")

    @property
    def wrong(self) -> int:
        return self.feedback - self.correct

    def since(self, earlier: VersionCounts | None) -> VersionCounts:
        """What was counted after `earlier` was read (the window counters are hourly: a rollout's baseline is
        what its first hour held before it began). Never below zero, and consistent: an answer that came after
        the baseline to a prediction made before it counts as feedback, not as a new prediction."""
        if earlier is None:
            return self
        fields = ("predictions", "positive", "feedback", "correct", "server_errors")
        left = {name: max(0, getattr(self, name) - getattr(earlier, name)) for name in fields}
        left["positive"] = min(left["positive"], left["predictions"])
        left["correct"] = min(left["correct"], left["feedback"])
        return VersionCounts(self.version, **left)

    @property
    def requests(self) -> int:
        return self.predictions + self.server_errors


@dataclasses.dataclass(frozen=True)
class RolloutEvidence:
    """One tick's observation: both versions' counts, whether N serves its share, and a person's command."""

    stable: VersionCounts
    candidate: VersionCounts
    ready: bool  # N's revision is healthy and receives its share
    command: Command | None = None


@dataclasses.dataclass(frozen=True)
class RolloutState:
    """One rollout, as stored beside the deployment document."""

    stable_version: str
    candidate_version: str
    started_at: datetime
    step_started_at: datetime
    step: int = 0  # index into settings.steps
    status: RolloutStatus = RolloutStatus.IN_PROGRESS
    reason: Reason | None = None  # why it ended
    ended_at: datetime | None = None

    def percent(self, settings: RolloutSettings) -> int:
        """N's share of the traffic in this state."""
        match self.status:
            case RolloutStatus.IN_PROGRESS:
                return settings.steps[self.step]
            case RolloutStatus.COMPLETED:
                return 100
        return 0

    def to_document(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status.value, "reason": self.reason and self.reason.value}

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> RolloutState:
        names = {field.name for field in dataclasses.fields(cls)}
        fields = {key: value for key, value in data.items() if key in names}
        fields["status"] = RolloutStatus(fields.get("status", RolloutStatus.IN_PROGRESS))
        fields["reason"] = Reason(fields["reason"]) if fields.get("reason") else None
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class Check:
    """One sequential test's numbers: the counts and rates it compared, its log likelihood ratio and the
    threshold log(1/alpha) at which it rolls N back."""

    name: Reason  # the reason a rollback on this check gives
    events: str  # what was counted, out of what
    candidate_events: int
    candidate_total: int
    stable_events: int
    stable_total: int
    statistic: float
    threshold: float

    @property
    def failed(self) -> bool:
        return self.statistic >= self.threshold

    @property
    def candidate_rate(self) -> float | None:
        return self.candidate_events / self.candidate_total if self.candidate_total else None

    @property
    def stable_rate(self) -> float | None:
        return self.stable_events / self.stable_total if self.stable_total else None

    def to_document(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "name": self.name.value,
            "candidate_rate": self.candidate_rate,
            "stable_rate": self.stable_rate,
            "failed": self.failed,
        }

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> Check:
        """A stored check; the derived rates and verdict are computed again, not read."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{key: value for key, value in data.items() if key in names}, "name": Reason(data["name"])})


@dataclasses.dataclass(frozen=True)
class RolloutDecision:
    """The action, why, the state to leave behind, N's share after it, and the checks' numbers."""

    action: RolloutAction
    reason: Reason
    state: RolloutState
    percent: int
    checks: tuple[Check, ...] = ()
    detail: str = ""

    def to_document(self) -> dict[str, Any]:
        """For the history entry and /status: every number behind the decision."""
        return {
            "action": self.action.value,
            "reason": self.reason.value,
            "percent": self.percent,
            "step": self.state.step,
            "detail": self.detail,
            "checks": {check.name: check.to_document() for check in self.checks},
        }


def start(stable_version: str, candidate_version: str, now: datetime) -> RolloutState:
    """A rollout of candidate_version beside stable_version, at its first step."""
    return RolloutState(stable_version, candidate_version, started_at=now, step_started_at=now)


def decide(state: RolloutState, evidence: RolloutEvidence, settings: RolloutSettings, now: datetime) -> RolloutDecision:
    """What the rollout does next given the evidence since it began; see the policy table in docs/promotion.md."""
    if state.status is not RolloutStatus.IN_PROGRESS:
        return RolloutDecision(RolloutAction.HOLD, Reason.FINISHED, state, state.percent(settings))
    if (evidence.stable.version, evidence.candidate.version) != (state.stable_version, state.candidate_version):
        raise ValueError(
            f"evidence of versions {evidence.stable.version}/{evidence.candidate.version} for the rollout of "
            f"{state.stable_version}/{state.candidate_version}"
        )
    checks = evaluate(evidence, settings)
    if evidence.command is Command.ABORT:
        return _end(state, RolloutStatus.ABORTED, Reason.ABORTED, settings, now, checks, "aborted by a person")
    if evidence.command is Command.COMPLETE:
        return _end(state, RolloutStatus.COMPLETED, Reason.COMPLETED_BY_OPERATOR, settings, now, checks, "")
    if settings.steps[state.step] == 100:
        return _end(state, RolloutStatus.COMPLETED, Reason.IMMEDIATE, settings, now, checks, "ROLLOUT_STEPS is 100")
    for check in checks:  # in order of severity: errors, then what users said, then the label-free proxy
        if check.failed:
            detail = f"{check.name}: statistic {check.statistic:.2f} >= threshold {check.threshold:.2f}"
            return _end(state, RolloutStatus.ROLLED_BACK, check.name, settings, now, checks, detail)
    if (now - state.started_at).total_seconds() >= settings.max_s:
        detail = (
            f"not completed within {settings.max_s:g} s: at {settings.steps[state.step]}% with "
            f"{evidence.candidate.feedback} of {settings.min_feedback} feedback answers"
        )
        return _end(state, RolloutStatus.ROLLED_BACK, Reason.MAX_TIME, settings, now, checks, detail)
    if not evidence.ready:
        return _hold(state, Reason.NOT_READY, settings, checks, f"version {state.candidate_version} is not ready")
    baked = (now - state.step_started_at).total_seconds()
    if baked < settings.bake_s:
        return _hold(state, Reason.BAKING, settings, checks, f"{baked:.0f} of {settings.bake_s:g} s at this step")
    required = settings.feedback_required(state.step)
    if evidence.candidate.feedback < required:
        detail = f"{evidence.candidate.feedback} of {required} feedback answers"
        return _hold(state, Reason.AWAITING_FEEDBACK, settings, checks, detail)
    if settings.steps[state.step + 1] == 100:
        return _end(state, RolloutStatus.COMPLETED, Reason.EVIDENCE_HOLDS, settings, now, checks, "")
    advanced = dataclasses.replace(state, step=state.step + 1, step_started_at=now)
    return RolloutDecision(
        RolloutAction.ADVANCE, Reason.EVIDENCE_HOLDS, advanced, advanced.percent(settings), checks, ""
    )


def _hold(
    state: RolloutState, reason: Reason, settings: RolloutSettings, checks: tuple[Check, ...], detail: str
) -> RolloutDecision:
    return RolloutDecision(RolloutAction.HOLD, reason, state, state.percent(settings), checks, detail)


def _end(
    state: RolloutState,
    status: RolloutStatus,
    reason: Reason,
    settings: RolloutSettings,
    now: datetime,
    checks: tuple[Check, ...],
    detail: str,
) -> RolloutDecision:
    ended = dataclasses.replace(state, status=status, reason=reason, ended_at=now)
    action = RolloutAction.COMPLETE if status is RolloutStatus.COMPLETED else RolloutAction.ROLL_BACK
    return RolloutDecision(action, reason, ended, ended.percent(settings), checks, detail)


def evaluate(evidence: RolloutEvidence, settings: RolloutSettings) -> tuple[Check, ...]:
    """The three sequential tests on the evidence, in the order a rollback reports them."""
    stable, candidate = evidence.stable, evidence.candidate
    tests = [
        (
            Reason.SERVER_ERRORS,
            "failed requests / requests",
            (candidate.server_errors, candidate.requests, stable.server_errors, stable.requests),
            functools.partial(where_events_fell, excess=settings.server_error_excess),
            settings.alpha_server_errors,
        ),
        (
            Reason.FEEDBACK_WORSE,
            "wrong answers / feedback answers",
            (candidate.wrong, candidate.feedback, stable.wrong, stable.feedback),
            functools.partial(where_events_fell, excess=settings.feedback_drop),
            settings.alpha_feedback,
        ),
        (
            Reason.POSITIVE_RATE_SHIFT,
            "positive answers / predictions",
            (candidate.positive, candidate.predictions, stable.positive, stable.predictions),
            functools.partial(
                shift_beyond_margin, margin=settings.positive_rate_margin, shift=settings.positive_rate_shift
            ),
            settings.alpha_positive_rate_side,
        ),
    ]
    return tuple(
        Check(reason, events, *counts, statistic(*counts), math.log(1 / alpha))
        for reason, events, counts, statistic, alpha in tests
    )


def where_events_fell(events_n: int, total_n: int, events_s: int, total_s: int, excess: float) -> float:
    """Log likelihood ratio that N's event rate is S's plus `excess`, against equal rates, from which version
    each event (a wrong answer, a failed request) came.

    With equal rates an event is N's with probability share = total_n / (total_n + total_s) whatever the order
    of the events; the likelihood of the split is binomial given the number of events, a martingale in the
    events under equal rates and a supermartingale when N's rate is lower. Using the whole window's share while
    the steps change it is conservative (a mixture of binomials varies less than one binomial), and the
    binomial is conservative against the exact hypergeometric. The alternative's rate ratio uses S's rate,
    smoothed so that no event yet is not a zero rate.
    """
    if total_n == 0 or total_s == 0 or events_n + events_s == 0:
        return 0.0
    share = total_n / (total_n + total_s)
    rate_s = (events_s + 1) / (total_s + 2)
    ratio = (rate_s + excess) / rate_s
    alternative = ratio * share / (ratio * share + 1 - share)
    return events_n * math.log(alternative / share) + events_s * math.log((1 - alternative) / (1 - share))


def shift_beyond_margin(yes_n: int, total_n: int, yes_s: int, total_s: int, margin: float, shift: float) -> float:
    """Log likelihood ratio that N's rate differs from S's by margin + shift, against a difference of exactly
    margin (anything within the margin is no evidence), the larger of the two directions.

    Gaussian SPRT on the difference of the two rates with its estimated variance (smoothed), sound for a
    positive rate (thousands of predictions, rates far from 0 and 1): log LR = (shift * (|d| - margin) -
    shift**2 / 2) / variance.
    """
    if total_n == 0 or total_s == 0:
        return 0.0
    rate_n, rate_s = (yes_n + 1) / (total_n + 2), (yes_s + 1) / (total_s + 2)
    variance = rate_n * (1 - rate_n) / (total_n + 1) + rate_s * (1 - rate_s) / (total_s + 1)
    return (shift * (abs(rate_n - rate_s) - margin) - shift**2 / 2) / variance
