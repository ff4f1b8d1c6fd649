"""Metrics and plots for a binary classifier's probabilities."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, log loss, ROC AUC, precision, recall and F1 at the decision threshold."""
    labels = np.asarray(labels)
    predicted = (probabilities >= threshold).astype(int)
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "loss": float(metrics.log_loss(labels, clipped, labels=[0, 1])),
        "roc_auc": float(metrics.roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
    }


def confusion_figure(labels: np.ndarray, probabilities: np.ndarray, threshold: float, title: str) -> Figure:
    """Confusion matrix with counts and row-normalised rates."""
    matrix = metrics.confusion_matrix(labels, probabilities >= threshold, labels=[0, 1])
    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if rates[row, col] > 0.5 else "black"
        axes.text(col, row, f"{count}\n{rates[row, col]:.1%}", ha="center", va="center", color=colour)
    axes.set_xticks([0, 1], ["negative", "positive"])
    axes.set_yticks([0, 1], ["negative", "positive"])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def curves_figure(labels: np.ndarray, probabilities: np.ndarray, title: str) -> Figure:
    """ROC and precision-recall curves side by side."""
    figure = Figure(figsize=(9, 4))
    roc_axes, pr_axes = figure.subplots(1, 2)
    fpr, tpr, _ = metrics.roc_curve(labels, probabilities)
    roc_axes.plot(fpr, tpr, label=f"AUC {metrics.auc(fpr, tpr):.3f}")
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({title})")
    roc_axes.legend(loc="lower right")
    precision, recall, _ = metrics.precision_recall_curve(labels, probabilities)
    ap = metrics.average_precision_score(labels, probabilities)
    pr_axes.plot(recall, precision, label=f"AP {ap:.3f}")
    pr_axes.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({title})")
    pr_axes.legend(loc="lower left")
    figure.tight_layout()
    return figure
