"""Calibration (training.calibration): the expected calibration error on cases worked by hand, temperature scaling
recovering a known temperature, and its fold into the weights changing no answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import calibration
from training.model import FastTextClassifier, predict_logits, predict_proba, scale_logits

pytestmark = pytest.mark.unit


def test_ece_is_zero_when_each_bin_is_right_as_often_as_it_says() -> None:
    # Ten answers at confidence 0.9 (bin 8 of [0.5, 1]): nine right, one wrong.
    probabilities = np.full(10, 0.9)
    labels = np.array([1] * 9 + [0])

    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.0)


def test_ece_weights_each_bins_gap_by_its_share() -> None:
    # Four confident (0.95) answers all right, four unsure ones (0.6 positive, i.e. confidence 0.6) all wrong.
    probabilities = np.array([0.95, 0.05, 0.95, 0.05, 0.6, 0.4, 0.6, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 1])

    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.05 + 0.5 * 0.6)


def test_ece_judges_the_answers_at_the_models_threshold() -> None:
    # At threshold 0.7, p = 0.6 is a negative answer with confidence 0.4: right here, and under-confident.
    probabilities, labels = np.array([0.6, 0.6]), np.array([0, 0])

    assert calibration.expected_calibration_error(probabilities, labels, threshold=0.5) == pytest.approx(0.6)
    assert calibration.expected_calibration_error(probabilities, labels, threshold=0.7) == pytest.approx(0.6)
    assert calibration.expected_calibration_error(np.array([0.6]), np.array([1]), threshold=0.7) == pytest.approx(0.4)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    overconfident = true_logits * 2.0  # a model twice as sure as it should be

    assert calibration.fit_temperature(overconfident, labels) == pytest.approx(2.0, rel=0.05)


def test_calibrate_applies_temperature_only_when_it_helps_and_only_at_threshold_one_half() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 3, 5_000)
    labels = (rng.random(5_000) < 1 / (1 + np.exp(-true_logits))).astype(int)

    fitted = calibration.calibrate(true_logits * 2.0, labels)
    at_other_threshold = calibration.calibrate(true_logits * 2.0, labels, threshold=0.7)

    assert fitted.applied
    assert fitted.ece_after < fitted.ece_before
    assert (at_other_threshold.applied, at_other_threshold.temperature) == (False, 1.0)
    assert at_other_threshold.ece_after == at_other_threshold.ece_before


def test_scale_logits_divides_every_logit_and_moves_no_answer_at_one_half() -> None:
    torch.manual_seed(0)
    model = FastTextClassifier(20, 4)
    with torch.no_grad():
        model.embedding.weight.normal_()
        model.linear.weight.normal_()
        model.linear.bias.fill_(0.2)
    encoded = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], []]
    before_logits, before = predict_logits(model, encoded), predict_proba(model, encoded)

    scale_logits(model, 1 / 1.5)

    np.testing.assert_allclose(predict_logits(model, encoded), before_logits / 1.5, rtol=1e-5, atol=1e-6)
    assert ((predict_proba(model, encoded) >= 0.5) == (before >= 0.5)).all()
