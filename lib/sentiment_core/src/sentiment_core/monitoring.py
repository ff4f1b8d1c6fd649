"""What monitoring counts per model version and hour, and the statistics it derives: pure, no I/O.

Every prediction adds, in the same commit as its record (firestore_rest.save_predictions), to its version's hourly
window counter: one in a bin of the probability histogram, one in a bin of the text-length histogram, and its
confidence (the probability that its answer is right if p is calibrated: p for a positive answer, 1 - p for a
negative one; max(p, 1 - p) at the threshold 0.5) to a sum. From those, for any window: the population stability
index of the probabilities against a reference histogram, and a label-free accuracy estimate, the mean confidence
(what NannyML's CBPE estimates for binary classification; honest only for calibrated probabilities).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

PROBABILITY_BINS = 20  # equal-width bins of [0, 1]: enough resolution for PSI at a few hundred predictions
# Upper edges (characters, exclusive) of the text-length bins; the last bin is everything longer.
LENGTH_EDGES = (20, 50, 100, 200, 500, 1000, 2000)
LENGTH_BINS = len(LENGTH_EDGES) + 1
PSI_FLOOR = 1e-4  # an empty bin's share, so that a bin seen on one side only adds a large but finite term
# 99.9% quantiles of the chi-square distribution with (bins - 1) degrees of freedom, scipy.stats.chi2.ppf(0.999, df)
# (tests/lib/test_monitoring.py checks them): between two samples of one distribution, PSI is about chi-square
# times (1/n + 1/N), so this much PSI is sampling noise 999 times in 1,000.
CHI2_999 = {19: 43.820196, 7: 24.321886}


def probability_field(index: int) -> str:
    return f"probability_bin_{index:02d}"


def length_field(index: int) -> str:
    return f"length_bin_{index}"


PROBABILITY_FIELDS = tuple(probability_field(i) for i in range(PROBABILITY_BINS))
LENGTH_FIELDS = tuple(length_field(i) for i in range(LENGTH_BINS))
CONFIDENCE_SUM = "confidence_sum"
# The share of a text's tokens the model knows (the graph's optional `known_fraction` output), summed, and the
# number of predictions that reported it: models exported before the output existed report none.
KNOWN_FRACTION_SUM = "known_fraction_sum"
KNOWN_FRACTION_COUNT = "known_fraction_count"


def probability_bin(probability: float) -> int:
    """The bin of a probability in [0, 1] (1.0 falls in the last bin)."""
    if not 0.0 <= probability <= 1.0 or math.isnan(probability):
        raise ValueError(f"a probability is in [0, 1], got {probability!r}")
    return min(int(probability * PROBABILITY_BINS), PROBABILITY_BINS - 1)


def length_bin(characters: int) -> int:
    return bisect.bisect_right(LENGTH_EDGES, characters)


@dataclasses.dataclass(frozen=True)
class MonitorCounts:
    """Histograms and the confidence sum of some predictions (one window's, or one commit's increments)."""

    probability: tuple[int, ...] = (0,) * PROBABILITY_BINS
    length: tuple[int, ...] = (0,) * LENGTH_BINS
    confidence_sum: float = 0.0
    known_fraction_sum: float = 0.0
    known_fraction_count: int = 0

    @classmethod
    def of(
        cls, probability: float, text: str, known_fraction: float | None = None, *, positive: bool | None = None
    ) -> MonitorCounts:
        """One prediction. positive: the answer given (probability >= the model's threshold); None: p >= 0.5."""
        histogram = [0] * PROBABILITY_BINS
        histogram[probability_bin(probability)] = 1
        lengths = [0] * LENGTH_BINS
        lengths[length_bin(len(text))] = 1
        known = (0.0, 0) if known_fraction is None else (float(known_fraction), 1)
        answered_positive = probability >= 0.5 if positive is None else positive
        confidence = probability if answered_positive else 1.0 - probability
        return cls(tuple(histogram), tuple(lengths), confidence, *known)

    def __add__(self, other: MonitorCounts) -> MonitorCounts:
        return MonitorCounts(
            tuple(a + b for a, b in zip(self.probability, other.probability, strict=True)),
            tuple(a + b for a, b in zip(self.length, other.length, strict=True)),
            self.confidence_sum + other.confidence_sum,
            self.known_fraction_sum + other.known_fraction_sum,
            self.known_fraction_count + other.known_fraction_count,
        )

    @property
    def predictions(self) -> int:
        return sum(self.probability)

    def increments(self) -> dict[str, int | float]:
        """The counter fields to add (only those that change)."""
        fields: dict[str, int | float] = {
            **{name: n for name, n in zip(PROBABILITY_FIELDS, self.probability, strict=True) if n},
            **{name: n for name, n in zip(LENGTH_FIELDS, self.length, strict=True) if n},
        }
        if self.confidence_sum:
            fields[CONFIDENCE_SUM] = self.confidence_sum
        if self.known_fraction_count:
            fields[KNOWN_FRACTION_SUM] = self.known_fraction_sum
            fields[KNOWN_FRACTION_COUNT] = self.known_fraction_count
        return fields

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> MonitorCounts:
        """A window counter's fields (missing ones are zero: counters written before monitoring existed)."""
        return cls(
            tuple(int(data.get(name, 0)) for name in PROBABILITY_FIELDS),
            tuple(int(data.get(name, 0)) for name in LENGTH_FIELDS),
            float(data.get(CONFIDENCE_SUM, 0.0)),
            float(data.get(KNOWN_FRACTION_SUM, 0.0)),
            int(data.get(KNOWN_FRACTION_COUNT, 0)),
        )

    def estimated_accuracy(self) -> float | None:
        """The mean confidence: the expected accuracy if the probabilities are calibrated (None: no predictions)."""
        return self.confidence_sum / self.predictions if self.predictions else None

    def unknown_token_rate(self) -> float | None:
        """The mean share of a text's tokens the model does not know (None: no prediction reported it)."""
        if not self.known_fraction_count:
            return None
        return min(max(1.0 - self.known_fraction_sum / self.known_fraction_count, 0.0), 1.0)


def psi_noise(bins: int, live: int, reference: int) -> float:
    """The PSI that two samples of `live` and `reference` counts from one distribution stay below 99.9% of the time
    (over `bins` bins): what a limit must allow on top before a shift is real."""
    return CHI2_999[bins - 1] * (1.0 / live + 1.0 / reference)


def psi(live: Sequence[int], reference: Sequence[float]) -> float | None:
    """Population stability index of a live histogram against a reference one (counts or shares, same bins):
    sum((l - r) * ln(l / r)) over the bins' shares, empty bins floored at PSI_FLOOR. None without live data.

    Rules of thumb: below 0.1 no shift, 0.1 to 0.2 moderate, above 0.2 a significant shift.
    """
    if len(live) != len(reference):
        raise ValueError(f"histograms of {len(live)} and {len(reference)} bins")
    live_total, reference_total = sum(live), sum(reference)
    if live_total == 0:
        return None
    if reference_total <= 0:
        raise ValueError("the reference histogram is empty")
    total = 0.0
    for live_count, reference_count in zip(live, reference, strict=True):
        live_share = max(live_count / live_total, PSI_FLOOR)
        reference_share = max(reference_count / reference_total, PSI_FLOOR)
        total += (live_share - reference_share) * math.log(live_share / reference_share)
    return total


REFERENCE_SCHEMA = 1


class InvalidReference(ValueError):
    """A reference (reference.json) is malformed."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """The statistics monitoring compares live traffic with: the model's own answers on the validation set.

    Computed by training (training.reference) with the exported graph, logged to the run as
    `monitoring/reference.json`, checked by the deploy gate, staged beside the model and copied to Firestore
    (`monitoring_references/{version}`) for the functions that read it.
    """

    counts: MonitorCounts  # the validation texts' histograms, confidence and known-token sums
    positive: int  # validation texts the model answered positive (probability >= its threshold)
    accuracy: float | None = None  # on the validation labels, for the record
    expected_calibration_error: float | None = None  # on the test set: the figure the deploy gate bounds
    source: str = "validation"
    model_sha256: str | None = None  # of the model.onnx whose answers these are (the gate checks it)

    @property
    def predictions(self) -> int:
        return self.counts.predictions

    @property
    def positive_rate(self) -> float:
        return self.positive / self.predictions

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "schema": REFERENCE_SCHEMA,
            "source": self.source,
            "predictions": self.predictions,
            "positive": self.positive,
            "probability_histogram": list(counts.probability),
            "length_histogram": list(counts.length),
            CONFIDENCE_SUM: counts.confidence_sum,
            KNOWN_FRACTION_SUM: counts.known_fraction_sum,
            KNOWN_FRACTION_COUNT: counts.known_fraction_count,
            # Derived, for people reading the file; from_dict recomputes them.
            "positive_rate": self.positive_rate,
            "unknown_token_rate": counts.unknown_token_rate(),
            "estimated_accuracy": counts.estimated_accuracy(),
            "accuracy": self.accuracy,
            "expected_calibration_error": self.expected_calibration_error,
            "model_sha256": self.model_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        if not isinstance(data, Mapping):
            raise InvalidReference("a reference is a JSON object")
        if data.get("schema") != REFERENCE_SCHEMA:
            raise InvalidReference(f"reference schema {data.get('schema')!r} is not {REFERENCE_SCHEMA}")
        try:
            probability = _counts(data["probability_histogram"], PROBABILITY_BINS, "probability_histogram")
            length = _counts(data["length_histogram"], LENGTH_BINS, "length_histogram")
            counts = MonitorCounts(
                probability,
                length,
                _number(data[CONFIDENCE_SUM], CONFIDENCE_SUM),
                _number(data[KNOWN_FRACTION_SUM], KNOWN_FRACTION_SUM),
                int(_number(data[KNOWN_FRACTION_COUNT], KNOWN_FRACTION_COUNT)),
            )
            positive = int(_number(data["positive"], "positive"))
        except KeyError as exc:
            raise InvalidReference(f"the reference lacks {exc.args[0]}") from exc
        if counts.predictions == 0:
            raise InvalidReference("the reference has no predictions")
        if sum(length) != counts.predictions or not 0 <= positive <= counts.predictions:
            raise InvalidReference("the reference's histograms and positive count disagree on its size")
        if not 0 <= counts.known_fraction_count <= counts.predictions:
            raise InvalidReference(f"{KNOWN_FRACTION_COUNT} must be between 0 and the number of predictions")
        optional = {name: data.get(name) for name in ("accuracy", "expected_calibration_error")}
        for name, value in optional.items():
            if value is not None:
                optional[name] = _number(value, name)
        model_sha256 = data.get("model_sha256")
        if model_sha256 is not None and not (isinstance(model_sha256, str) and len(model_sha256) == 64):
            raise InvalidReference("model_sha256 must be 64 hex characters or null")
        return cls(
            counts, positive, source=str(data.get("source", "validation")), model_sha256=model_sha256, **optional
        )

    @classmethod
    def of(
        cls,
        probabilities: Sequence[float],
        texts: Sequence[str],
        known_fractions: Sequence[float] | None,
        threshold: float,
        *,
        accuracy: float | None = None,
        expected_calibration_error: float | None = None,
        model_sha256: str | None = None,
    ) -> Reference:
        """The reference of a model's answers on some texts, counted exactly as predict counts live traffic."""
        known = known_fractions if known_fractions is not None else [None] * len(texts)
        counts = MonitorCounts()
        for probability, text, fraction in zip(probabilities, texts, known, strict=True):
            counts += MonitorCounts.of(float(probability), text, fraction, positive=probability >= threshold)
        positive = sum(1 for p in probabilities if p >= threshold)
        return cls(counts, positive, accuracy, expected_calibration_error, model_sha256=model_sha256)


def _counts(values: Any, size: int, name: str) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != size:
        raise InvalidReference(f"{name} must be a list of {size} counts")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise InvalidReference(f"{name} must hold whole counts >= 0")
    return tuple(values)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidReference(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Window:
    """What a version did in some hours: its window counters (records.WINDOW_FIELDS) with monitoring's fields."""

    predictions: int = 0
    positive: int = 0
    feedback: int = 0
    correct: int = 0
    counts: MonitorCounts = MonitorCounts()

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> Window:
        """One counter document (a missing field is zero)."""
        return cls(
            *(int(data.get(name, 0)) for name in ("predictions", "positive", "feedback", "correct")),
            MonitorCounts.from_document(data),
        )

    def __add__(self, other: Window) -> Window:
        return Window(
            self.predictions + other.predictions,
            self.positive + other.positive,
            self.feedback + other.feedback,
            self.correct + other.correct,
            self.counts + other.counts,
        )

    @property
    def positive_rate(self) -> float | None:
        return self.positive / self.predictions if self.predictions else None

    @property
    def feedback_accuracy(self) -> float | None:
        return self.correct / self.feedback if self.feedback else None


DEFAULT_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 24 * 7  # what GET /monitoring reads at most: hours x shards counter documents per version


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    """When `drift` fires (docs/monitoring.md says why these defaults; bench/drift.py measures them)."""

    min_predictions: int = 200
    max_psi: float = 0.2
    max_unknown_token_increase: float = 0.05
    max_positive_rate_shift: float = 0.10
    window_hours: int = DEFAULT_WINDOW_HOURS
    # How often the scheduled evaluation runs: each one reads up to window_hours x 16 counter documents per
    # version, so every tick (every minute) would cost 550,000 reads a day per version for little news.
    evaluate_every_s: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DriftSettings:
        """DRIFT_MIN_PREDICTIONS, DRIFT_MAX_PSI, DRIFT_MAX_UNKNOWN_TOKEN_INCREASE, DRIFT_MAX_POSITIVE_RATE_SHIFT,
        DRIFT_WINDOW_HOURS, DRIFT_EVALUATE_EVERY_S; ConfigError names the variable to fix."""
        from sentiment_core import config

        default = cls()
        minimum = config.number("DRIFT_MIN_PREDICTIONS", default.min_predictions, 1, 1_000_000, env)
        hours = config.number("DRIFT_WINDOW_HOURS", default.window_hours, 1, MAX_WINDOW_HOURS, env)
        for name, value in (("DRIFT_MIN_PREDICTIONS", minimum), ("DRIFT_WINDOW_HOURS", hours)):
            if not value.is_integer():
                raise config.ConfigError(f"{name} must be a whole number, got {value:g}")
        return cls(
            min_predictions=int(minimum),
            max_psi=config.number("DRIFT_MAX_PSI", default.max_psi, 0.001, 10.0, env),
            max_unknown_token_increase=config.number(
                "DRIFT_MAX_UNKNOWN_TOKEN_INCREASE", default.max_unknown_token_increase, 0.001, 1.0, env
            ),
            max_positive_rate_shift=config.number(
                "DRIFT_MAX_POSITIVE_RATE_SHIFT", default.max_positive_rate_shift, 0.001, 1.0, env
            ),
            window_hours=int(hours),
            evaluate_every_s=config.number("DRIFT_EVALUATE_EVERY_S", default.evaluate_every_s, 0.0, 86400.0, env),
        )


@dataclasses.dataclass(frozen=True)
class Assessment:
    """One version's window against its reference: the statistics, and whether (and why) drift fires."""

    window: Window
    reference: Reference | None
    drift: bool
    reasons: tuple[str, ...]
    enough_data: bool
    score_psi: float | None
    length_psi: float | None

    def statistics(self) -> dict[str, Any]:
        """The API's fields of one version or hour (GET /monitoring, docs/monitoring.md)."""
        window, reference = self.window, self.reference
        return {
            "predictions": window.predictions,
            "drift": self.drift,
            "reasons": list(self.reasons),
            "enough_data": self.enough_data,
            "score_psi": _rounded(self.score_psi),
            "length_psi": _rounded(self.length_psi),
            "positive_rate": _rounded(window.positive_rate),
            "reference_positive_rate": _rounded(reference.positive_rate) if reference else None,
            "unknown_token_rate": _rounded(window.counts.unknown_token_rate()),
            "reference_unknown_token_rate": _rounded(reference.counts.unknown_token_rate()) if reference else None,
            "estimated_accuracy": _rounded(window.counts.estimated_accuracy()),
            "feedback_accuracy": _rounded(window.feedback_accuracy),
            "feedback": window.feedback,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


RESOLVE_FACTOR = 0.8  # a drifting version resolves only once every statistic is below 80% of its limit


def assess(
    window: Window, reference: Reference | None, settings: DriftSettings, *, drifting: bool = False
) -> Assessment:
    """Pure: the drift rule of docs/monitoring.md.

    With at least `min_predictions` predictions in the window, drift fires when any of these holds, each
    listed as a reason: the PSI of the probabilities against the reference above `max_psi` plus its sampling
    noise at this many predictions (psi_noise); the same for the PSI of the text lengths; the unknown-token rate
    more than `max_unknown_token_increase` above the reference's; the positive-answer rate more than
    `max_positive_rate_shift` away from the reference's.
    Without a reference (a version staged before monitoring) nothing is compared and drift is false.

    drifting: the version's recorded state. A drifting version is judged against RESOLVE_FACTOR times each limit,
    so a statistic hovering at its limit does not open and close an incident every few minutes.
    """
    if drifting:
        settings = dataclasses.replace(
            settings,
            max_psi=settings.max_psi * RESOLVE_FACTOR,
            max_unknown_token_increase=settings.max_unknown_token_increase * RESOLVE_FACTOR,
            max_positive_rate_shift=settings.max_positive_rate_shift * RESOLVE_FACTOR,
        )
    counts = window.counts
    score_psi = psi(counts.probability, reference.counts.probability) if reference else None
    length_psi = psi(counts.length, reference.counts.length) if reference else None
    enough = reference is not None and window.predictions >= settings.min_predictions
    reasons: list[str] = []
    if enough:
        assert reference is not None
        for name, value, bins in (("score_psi", score_psi, PROBABILITY_BINS), ("length_psi", length_psi, LENGTH_BINS)):
            noise = psi_noise(bins, counts.predictions, reference.predictions) if counts.predictions else 0.0
            if value is not None and value > settings.max_psi + noise:
                reasons.append(
                    f"{name} {value:.3f} > {settings.max_psi + noise:.3f} ({settings.max_psi:g} + {noise:.3f} of "
                    f"sampling noise at {counts.predictions} predictions)"
                )
        live_unknown, reference_unknown = counts.unknown_token_rate(), reference.counts.unknown_token_rate()
        increase = None if live_unknown is None or reference_unknown is None else live_unknown - reference_unknown
        if increase is not None and increase > settings.max_unknown_token_increase:
            reasons.append(
                f"unknown_token_rate {live_unknown:.3f} is {increase:.3f} above the reference "
                f"{reference_unknown:.3f} (> {settings.max_unknown_token_increase:g})"
            )
        live_positive = window.positive_rate
        shift = None if live_positive is None else abs(live_positive - reference.positive_rate)
        if shift is not None and shift > settings.max_positive_rate_shift:
            reasons.append(
                f"positive_rate {live_positive:.3f} differs from the reference {reference.positive_rate:.3f} by "
                f"{shift:.3f} (> {settings.max_positive_rate_shift:g})"
            )
    return Assessment(window, reference, bool(reasons), tuple(reasons), enough, score_psi, length_psi)


class DriftChange(enum.Enum):
    DETECTED = "drift_detected"
    RESOLVED = "drift_resolved"


def drift_change(previously_drifting: bool, assessment: Assessment, *, in_service: bool = True) -> DriftChange | None:
    """Pure: the event to log and record when a version's drift state changes, else None (the assessment made
    with `drifting=previously_drifting`).

    A window without enough data changes nothing: traffic that stops does not resolve a drift, and a version
    that has barely served cannot start one. A drifting version that left service resolves: nobody sees its
    answers any more, and a state left drifting would read as a live problem.
    """
    if not in_service:
        return DriftChange.RESOLVED if previously_drifting else None
    if not assessment.enough_data or assessment.drift == previously_drifting:
        return None
    return DriftChange.DETECTED if assessment.drift else DriftChange.RESOLVED
