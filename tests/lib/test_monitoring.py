"""Monitoring's counters and statistics (sentiment_core.monitoring): bins, sums, PSI, the label-free estimate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sentiment_core.config import ConfigError
from sentiment_core.monitoring import (
    CHI2_999,
    CONFIDENCE_SUM,
    LENGTH_BINS,
    PROBABILITY_BINS,
    DriftChange,
    DriftSettings,
    InvalidReference,
    MonitorCounts,
    Reference,
    Window,
    assess,
    drift_change,
    length_bin,
    probability_bin,
    probability_field,
    psi,
    psi_noise,
)


@pytest.mark.parametrize(("probability", "index"), [(0.0, 0), (0.049, 0), (0.05, 1), (0.5, 10), (0.999, 19), (1.0, 19)])
def test_probability_bins_are_twenty_equal_widths_with_one_in_the_last(probability: float, index: int) -> None:
    assert probability_bin(probability) == index


@pytest.mark.parametrize("probability", [-0.01, 1.01, math.nan])
def test_probability_outside_zero_one_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        probability_bin(probability)


@pytest.mark.parametrize(("characters", "index"), [(0, 0), (19, 0), (20, 1), (199, 3), (2000, 7), (64_000, 7)])
def test_length_bins_by_characters(characters: int, index: int) -> None:
    assert length_bin(characters) == index


def test_counts_of_predictions_add_up_to_their_histograms_and_confidence() -> None:
    made = [(0.9, "great food"), (0.2, "cold soup " * 10), (0.5, "x" * 600)]

    total = sum((MonitorCounts.of(p, text) for p, text in made), MonitorCounts())

    assert total.predictions == 3
    assert total.probability[18] == total.probability[4] == total.probability[10] == 1
    assert (total.length[0], total.length[3], total.length[5]) == (1, 1, 1)
    assert total.confidence_sum == pytest.approx(0.9 + 0.8 + 0.5)
    assert total.estimated_accuracy() == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert MonitorCounts().estimated_accuracy() is None


def test_increments_name_only_the_fields_that_change_and_read_back_from_a_document() -> None:
    counts = MonitorCounts.of(0.97, "lovely") + MonitorCounts.of(0.97, "lovely place")

    fields = counts.increments()

    assert fields == {probability_field(19): 2, "length_bin_0": 2, CONFIDENCE_SUM: pytest.approx(1.94)}
    assert MonitorCounts.from_document({"model_version": "3", **fields}) == counts
    assert MonitorCounts.from_document({}) == MonitorCounts()
    assert (len(counts.probability), len(counts.length)) == (PROBABILITY_BINS, LENGTH_BINS)


def test_psi_is_zero_for_the_same_shares_and_matches_its_formula_recomputed() -> None:
    reference = [5, 10, 20, 30, 20, 10, 5]
    live = [10, 10, 10, 10, 10, 40, 10]

    expected = sum(
        (lv - rf) * math.log(lv / rf)
        for lv, rf in zip(np.array(live) / sum(live), np.array(reference) / sum(reference), strict=True)
    )

    assert psi([x * 3 for x in reference], reference) == pytest.approx(0.0)
    assert psi(live, reference) == pytest.approx(expected)
    assert psi(live, reference) > 0.2  # a shift this large is "significant" by the usual rule
    assert psi([0] * 7, reference) is None


def test_psi_of_a_bin_seen_on_one_side_only_is_large_but_finite() -> None:
    value = psi([0, 0, 10], [10, 0, 0])

    assert math.isfinite(value)
    assert value > 10


def test_psi_refuses_histograms_of_other_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        psi([1, 2], [1, 2, 3])


def _counts(probabilities: list[float], text: str = "a short review text", known: float | None = 1.0) -> MonitorCounts:
    return sum((MonitorCounts.of(p, text, known) for p in probabilities), MonitorCounts())


# The validation set's answers: 60% positive, confident, every token known.
REFERENCE = Reference.of([0.95] * 60 + [0.05] * 40, ["a short review text"] * 100, [1.0] * 100, 0.5)


def window(probabilities: list[float], *, known: float | None = 1.0, text: str = "a short review text") -> Window:
    positive = sum(1 for p in probabilities if p >= 0.5)
    return Window(len(probabilities), positive, 0, 0, _counts(probabilities, text, known))


SETTINGS = DriftSettings(min_predictions=200)


@pytest.mark.parametrize(
    ("live", "reference", "drift", "reasons", "enough"),
    [
        (window([0.95] * 120 + [0.05] * 80), REFERENCE, False, [], True),
        (window([0.95] * 12 + [0.05] * 8), REFERENCE, False, [], False),  # too few predictions
        (window([0.95] * 300), None, False, [], False),  # no reference: nothing compared
        (window([0.95] * 150 + [0.05] * 50), REFERENCE, True, ["positive_rate"], True),  # 75% vs 60%
        (window([0.95] * 100 + [0.05] * 100), REFERENCE, False, [], True),  # 50% vs 60%: not more than 0.10
        (window([0.95] * 90 + [0.05] * 110), REFERENCE, True, ["positive_rate"], True),  # 45% vs 60%
        (window([0.55] * 120 + [0.45] * 80), REFERENCE, True, ["score_psi"], True),  # unsure answers
        (window([0.95] * 120 + [0.05] * 80, known=0.8), REFERENCE, True, ["unknown_token_rate"], True),
        (window([0.95] * 120 + [0.05] * 80, known=0.96), REFERENCE, False, [], True),  # 4 points: within
        (window([0.95] * 120 + [0.05] * 80, known=None), REFERENCE, False, [], True),  # an older model: no rate
        (window([0.95] * 120 + [0.05] * 80, text="x" * 900), REFERENCE, True, ["length_psi"], True),
    ],
    ids=[
        "like-validation",
        "too-few",
        "no-reference",
        "more-positive",
        "less-positive-by-exactly-ten-points",
        "less-positive",
        "less-confident",
        "unknown-words",
        "unknown-words-within-threshold",
        "model-without-known-fraction",
        "longer-texts",
    ],
)
def test_drift_fires_with_enough_predictions_on_exactly_the_statistics_past_their_limits(
    live: Window, reference, drift: bool, reasons: list[str], enough: bool
) -> None:
    assessment = assess(live, reference, SETTINGS)

    assert (assessment.drift, assessment.enough_data) == (drift, enough)
    assert [reason.split()[0] for reason in assessment.reasons] == reasons


@pytest.mark.parametrize(
    ("drifting_before", "live", "change"),
    [
        (False, window([0.95] * 150 + [0.05] * 50), DriftChange.DETECTED),
        (True, window([0.95] * 150 + [0.05] * 50), None),  # still drifting: nothing new to say
        (True, window([0.95] * 120 + [0.05] * 80), DriftChange.RESOLVED),
        (False, window([0.95] * 120 + [0.05] * 80), None),
        (True, window([0.95] * 15), None),  # traffic stopped: too few to say the drift is over
        (False, window([0.05] * 15), None),  # too few to say it started
    ],
    ids=["starts", "goes-on", "ends", "stays-fine", "few-while-drifting", "few-while-fine"],
)
def test_drift_change_is_recorded_when_drift_starts_or_ends_never_on_too_few_predictions(
    drifting_before: bool, live: Window, change: DriftChange | None
) -> None:
    assert drift_change(drifting_before, assess(live, REFERENCE, SETTINGS, drifting=drifting_before)) is change


@pytest.mark.parametrize(
    ("positive_share", "drifting", "drift"),
    [
        (0.71, False, True),  # 11 points from 60%: past the limit of 10
        (0.69, False, False),
        (0.69, True, True),  # a drifting version stays drifting until below 80% of the limit (8 points)
        (0.67, True, False),
    ],
)
def test_a_drifting_version_resolves_only_well_inside_each_limit(
    positive_share: float, drifting: bool, drift: bool
) -> None:
    positives = round(positive_share * 200)
    live = window([0.95] * positives + [0.05] * (200 - positives))

    assert assess(live, REFERENCE, SETTINGS, drifting=drifting).drift is drift


def test_drift_change_resolves_a_drifting_version_that_left_service_whatever_its_traffic() -> None:
    few = assess(window([0.05] * 3), REFERENCE, SETTINGS, drifting=True)

    assert drift_change(True, few, in_service=False) is DriftChange.RESOLVED
    assert drift_change(False, few, in_service=False) is None


def test_confidence_is_the_probability_of_the_answer_given_at_the_models_threshold() -> None:
    at_seven_tenths = MonitorCounts.of(0.6, "ok", positive=False)  # threshold 0.7: 0.6 is a negative answer

    assert at_seven_tenths.confidence_sum == pytest.approx(0.4)
    assert MonitorCounts.of(0.6, "ok").confidence_sum == pytest.approx(0.6)
    assert MonitorCounts.of(0.2, "ok").confidence_sum == pytest.approx(0.8)


def test_statistics_carry_every_field_of_the_monitoring_contract() -> None:
    statistics = assess(window([0.95] * 150 + [0.05] * 50, known=0.5), REFERENCE, SETTINGS).statistics()

    contract = {
        "predictions": int,
        "drift": bool,
        "reasons": list,
        "score_psi": float,
        "positive_rate": float,
        "reference_positive_rate": float,
        "unknown_token_rate": float,
        "reference_unknown_token_rate": float,
        "estimated_accuracy": float,
        "feedback": int,
    }
    assert {name: type(statistics[name]) for name in contract} == contract
    assert statistics["feedback_accuracy"] is None
    assert statistics["positive_rate"] == 0.75
    assert statistics["unknown_token_rate"] == 0.5
    assert statistics["estimated_accuracy"] == pytest.approx(0.95)


def test_reference_round_trips_through_its_json_and_says_its_rates() -> None:
    reference = Reference.of([0.9, 0.2, 0.7, 0.4], ["good", "bad food", "fine", "meh " * 30], [1.0, 0.5, 1.0, 0.0], 0.5)

    decoded = Reference.from_dict(json.loads(json.dumps(reference.to_dict())))

    assert decoded == reference
    assert (reference.predictions, reference.positive, reference.positive_rate) == (4, 2, 0.5)
    assert reference.counts.unknown_token_rate() == pytest.approx(1 - 2.5 / 4)
    assert reference.to_dict()["estimated_accuracy"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": 2}, "schema"),
        ({"probability_histogram": [1] * 19}, "20 counts"),
        ({"length_histogram": [0.5] * 8}, "whole counts"),
        ({"positive": 500}, "disagree"),
        ({"confidence_sum": float("nan")}, "finite"),
        ({"known_fraction_count": 101}, "known_fraction_count"),
        ({"probability_histogram": [0] * 20, "length_histogram": [0] * 8, "positive": 0}, "no predictions"),
    ],
)
def test_reference_refuses_a_malformed_document(change: dict, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        Reference.from_dict({**REFERENCE.to_dict(), **change})


@pytest.mark.parametrize("field", ["positive", "probability_histogram", "confidence_sum", "known_fraction_count"])
def test_reference_without_a_required_field_names_it(field: str) -> None:
    with pytest.raises(InvalidReference, match=f"lacks {field}"):
        Reference.from_dict({k: v for k, v in REFERENCE.to_dict().items() if k != field})


def test_window_reads_a_counter_document_and_older_counters_read_as_zero() -> None:
    fields = {"predictions": 3, "positive": 2, "feedback": 1, "correct": 1, **_counts([0.9, 0.8, 0.1]).increments()}

    read = Window.from_document(fields) + Window.from_document({"predictions": 1})

    assert (read.predictions, read.positive, read.feedback_accuracy) == (4, 2, 1.0)
    assert read.counts == _counts([0.9, 0.8, 0.1])


def test_drift_settings_from_env_defaults_and_refusals() -> None:
    assert DriftSettings.from_env({}) == DriftSettings()
    read = DriftSettings.from_env({"DRIFT_MAX_PSI": "0.3", "DRIFT_WINDOW_HOURS": "6", "DRIFT_EVALUATE_EVERY_S": "0"})
    assert (read.max_psi, read.window_hours, read.evaluate_every_s) == (0.3, 6, 0.0)
    for name, value in [("DRIFT_MIN_PREDICTIONS", "2.5"), ("DRIFT_WINDOW_HOURS", "169"), ("DRIFT_MAX_PSI", "x")]:
        with pytest.raises(ConfigError, match=name):
            DriftSettings.from_env({name: value})


def test_psi_noise_quantiles_are_scipys_and_shrink_with_more_predictions() -> None:
    from scipy.stats import chi2

    assert {df: round(chi2.ppf(0.999, df), 6) for df in (PROBABILITY_BINS - 1, LENGTH_BINS - 1)} == CHI2_999
    assert psi_noise(PROBABILITY_BINS, 200, 17_810) == pytest.approx(43.820196 * (1 / 200 + 1 / 17_810))
    assert psi_noise(PROBABILITY_BINS, 5_000, 17_810) < psi_noise(PROBABILITY_BINS, 500, 17_810) / 5


def test_a_score_shift_within_the_sampling_noise_of_few_predictions_is_not_drift() -> None:
    # 200 predictions spread over bins 18 and 19 where the reference has bin 19 only: PSI about 0.3, of which the
    # noise at 200 predictions allows 0.22 above the limit.
    live = window([0.91] * 10 + [0.95] * 110 + [0.05] * 80)
    many = window(([0.91] * 10 + [0.95] * 110 + [0.05] * 80) * 10)

    validation = Reference.of([0.95] * 6_000 + [0.05] * 4_000, ["a short review text"] * 10_000, [1.0] * 10_000, 0.5)

    few_assessed, many_assessed = assess(live, validation, SETTINGS), assess(many, validation, SETTINGS)

    assert few_assessed.score_psi == pytest.approx(many_assessed.score_psi)
    assert (few_assessed.drift, many_assessed.drift) == (False, True)
    assert many_assessed.reasons[0].startswith("score_psi")
