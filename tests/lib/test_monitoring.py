"""Monitoring's counters and statistics (sentiment_core.monitoring): bins, sums, PSI, the label-free estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sentiment_core.monitoring import (
    CONFIDENCE_SUM,
    LENGTH_BINS,
    PROBABILITY_BINS,
    MonitorCounts,
    length_bin,
    probability_bin,
    probability_field,
    psi,
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
