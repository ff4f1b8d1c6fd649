"""Calibration: temperature scaling fitted on validation, and the expected calibration error that the deploy gate
bounds (MAX_CALIBRATION_ERROR).

Monitoring's label-free accuracy estimate is the mean of max(p, 1 - p); it equals the expected accuracy only
when the probabilities are calibrated. Temperature scaling (Guo et al., ICML 2017) divides the logit by one
number T fitted to minimise the validation log loss: it cannot change any answer at the 0.5 threshold (the
sign of the logit stays), so accuracy is untouched, and it is folded into the model's weights, so the graph
carries it for free (training.model.scale_logits). At another threshold t it would move answers (p >= t is
logit >= logit(t), and logit(t) / T != logit(t)), so it is applied only at 0.5.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar

CALIBRATION_BINS = 10  # equal widths of the confidence max(p, 1 - p) over [0.5, 1]
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _confidence(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(answers, their confidence): positive when p >= threshold, with confidence p; else 1 - p. As
    sentiment_core.monitoring counts it live, so the ECE is the error of the estimate monitoring shows."""
    positive = probabilities >= threshold
    return positive, np.where(positive, probabilities, 1.0 - probabilities)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5, bins: int = CALIBRATION_BINS
) -> float:
    """ECE of the answers: over bins of their confidence, the share-weighted |accuracy - mean confidence|.

    At the threshold 0.5 the confidence is max(p, 1 - p), in [0.5, 1], binned in equal widths of that range;
    at another threshold it can go below 0.5, and the lowest bin takes it.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if len(probabilities) == 0:
        raise ValueError("no probabilities to measure")
    positive, confidence = _confidence(probabilities, threshold)
    correct = positive == (labels == 1)
    index = np.clip(((confidence - 0.5) * 2 * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the log loss of sigmoid(logit / T) (bounded: a degenerate set cannot run away)."""
    logits = np.asarray(logits, dtype=np.float64)
    signs = np.where(np.asarray(labels) == 1, 1.0, -1.0)

    def log_loss(temperature: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -signs * logits / temperature)))

    result = minimize_scalar(log_loss, bounds=TEMPERATURE_BOUNDS, method="bounded")
    return float(result.x)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What calibration did: the temperature applied (1.0: none) and the validation ECE before and after."""

    temperature: float
    ece_before: float
    ece_after: float

    @property
    def applied(self) -> bool:
        return self.temperature != 1.0


def calibrate(logits: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> Calibration:
    """Fit T on validation; keep it only when it lowers the validation ECE, and only at the threshold 0.5
    (else T = 1, nothing changes)."""
    before = expected_calibration_error(_sigmoid(logits), labels, threshold)
    if threshold != 0.5:
        return Calibration(1.0, before, before)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(_sigmoid(np.asarray(logits) / temperature), labels, threshold)
    if after >= before:
        return Calibration(1.0, before, before)
    return Calibration(temperature, before, after)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def reliability_figure(curves: dict[str, np.ndarray], labels: np.ndarray, title: str, threshold: float = 0.5) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, one line per named set of probabilities."""
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", label="perfectly calibrated")
    labels = np.asarray(labels)
    for name, probabilities in curves.items():
        probabilities = np.asarray(probabilities, dtype=np.float64)
        positive, confidence = _confidence(probabilities, threshold)
        correct = positive == (labels == 1)
        index = np.clip(((confidence - 0.5) * 2 * CALIBRATION_BINS).astype(int), 0, CALIBRATION_BINS - 1)
        points = [
            (confidence[index == b].mean(), correct[index == b].mean())
            for b in range(CALIBRATION_BINS)
            if (index == b).any()
        ]
        ece = expected_calibration_error(probabilities, labels, threshold)
        axes.plot(*zip(*points, strict=True), marker="o", label=f"{name} (ECE {ece:.3f})")
    axes.set_xlabel("confidence of the answer (p if positive, else 1 - p)")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="upper left")
    return figure
