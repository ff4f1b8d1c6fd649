"""The deploy gate (docs/architecture.md): a candidate version is refused, with the reason, unless every check passes.

Checks, in order: the ONNX file exists; its sha256 is the one the training run logged; onnxruntime loads it with
the contract's signature; it reproduces the run's golden outputs (PyTorch's probabilities on fixed texts) within
the tolerance; the run's validation accuracy is at least the configured minimum; the run logged monitoring's
reference (`monitoring/reference.json`, readable, naming this model's sha256, reporting the unknown-token rate
exactly when the model has that output); the run's expected calibration
error on the test set is at most the configured maximum (monitoring's label-free accuracy estimate is only as
honest as the calibration); the run's behavioural pass rate (training.behaviour's suite) is at least the
configured minimum.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from sentiment_core.contract import (
    BEHAVIOUR_PASS_RATE_METRIC,
    CALIBRATION_ERROR_METRIC,
    DEFAULT_THRESHOLD,
    GOLDEN_OUTPUTS_ARTIFACT,
    META_THRESHOLD,
    MODEL_FILENAME,
    REFERENCE_ARTIFACT,
    RUN_TAG_MODEL_SHA256,
    VALIDATION_ACCURACY_METRIC,
)
from sentiment_core.manifest import sha256_bytes
from sentiment_core.monitoring import InvalidReference, Reference
from sentiment_core.onnx_model import ModelContractError, has_known_fraction, open_session, probabilities
from sentiment_core.registry import ModelVersion, RegistryClient

GOLDEN_TOLERANCE = 1e-4
DEFAULT_MAX_CALIBRATION_ERROR = 0.05
# The default training run passes 92% of the suite, a quick run (20,000 examples, 2 epochs) 84%, one epoch on
# 2,000 examples less; the weakest capability of all is "never disappointed" (docs/model-card.md).
DEFAULT_MIN_BEHAVIOUR_PASS_RATE = 0.8


@dataclasses.dataclass(frozen=True)
class Candidate:
    """Everything the gate judges, fetched once from the registry and the run."""

    version: ModelVersion
    model_bytes: bytes | None
    logged_sha256: str | None
    golden: dict[str, Any] | None
    val_accuracy: float | None
    reference: Any = None  # the decoded monitoring/reference.json, None when the run logged none
    calibration_error: float | None = None
    behaviour_pass_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """accepted, or refused with a stable reason code and a sentence for the history."""

    accepted: bool
    reason: str = ""
    detail: str = ""
    threshold: float = DEFAULT_THRESHOLD  # the model's decision threshold, for the staged manifest
    reference: Reference | None = None  # monitoring's reference, staged beside the model

    @classmethod
    def refuse(cls, reason: str, detail: str) -> Verdict:
        return cls(False, reason, detail)


def fetch_candidate(registry: RegistryClient, version: ModelVersion) -> Candidate:
    """Download the model file, the run's logged sha256, golden outputs, reference and metrics."""
    run = registry.run(version.run_id)
    try:
        model_bytes = registry.download(registry.model_artifact_uri(version), MODEL_FILENAME)
    except FileNotFoundError:
        model_bytes = None
    try:
        golden = json.loads(registry.download(run.artifact_uri, GOLDEN_OUTPUTS_ARTIFACT))
    except (FileNotFoundError, ValueError):
        golden = None
    try:
        reference = json.loads(registry.download(run.artifact_uri, REFERENCE_ARTIFACT))
    except (FileNotFoundError, ValueError):
        reference = None
    return Candidate(
        version=version,
        model_bytes=model_bytes,
        logged_sha256=run.tags.get(RUN_TAG_MODEL_SHA256),
        golden=golden if isinstance(golden, dict) else None,
        val_accuracy=run.metrics.get(VALIDATION_ACCURACY_METRIC),
        reference=reference,
        calibration_error=run.metrics.get(CALIBRATION_ERROR_METRIC),
        behaviour_pass_rate=run.metrics.get(BEHAVIOUR_PASS_RATE_METRIC),
    )


def judge(
    candidate: Candidate,
    min_val_accuracy: float,
    max_calibration_error: float = DEFAULT_MAX_CALIBRATION_ERROR,
    min_behaviour_pass_rate: float = DEFAULT_MIN_BEHAVIOUR_PASS_RATE,
    tolerance: float = GOLDEN_TOLERANCE,
) -> Verdict:
    """Pure: the verdict on a fetched candidate."""
    if not candidate.model_bytes:
        return Verdict.refuse("model_missing", f"{MODEL_FILENAME} is missing or empty")
    actual = sha256_bytes(candidate.model_bytes)
    if candidate.logged_sha256 is None:
        return Verdict.refuse("sha256_not_logged", f"the run has no {RUN_TAG_MODEL_SHA256} tag")
    if actual != candidate.logged_sha256:
        return Verdict.refuse("sha256_mismatch", f"file has {actual}, the run logged {candidate.logged_sha256}")
    try:
        session = open_session(candidate.model_bytes)
    except ModelContractError as exc:
        return Verdict.refuse("model_invalid", str(exc))
    verdict = _check_golden(session, candidate.golden, tolerance)
    if not verdict.accepted:
        return verdict
    if candidate.val_accuracy is None:
        return Verdict.refuse("validation_accuracy_missing", f"the run has no {VALIDATION_ACCURACY_METRIC} metric")
    if candidate.val_accuracy < min_val_accuracy:
        return Verdict.refuse(
            "validation_accuracy_below_minimum",
            f"validation accuracy {candidate.val_accuracy:.4f} < minimum {min_val_accuracy:.4f}",
        )
    if candidate.calibration_error is None:
        return Verdict.refuse("calibration_error_missing", f"the run has no {CALIBRATION_ERROR_METRIC} metric")
    if candidate.calibration_error > max_calibration_error:
        return Verdict.refuse(
            "calibration_error_above_maximum",
            f"expected calibration error {candidate.calibration_error:.4f} > maximum {max_calibration_error:.4f}",
        )
    if candidate.behaviour_pass_rate is None:
        return Verdict.refuse("behaviour_pass_rate_missing", f"the run has no {BEHAVIOUR_PASS_RATE_METRIC} metric")
    if candidate.behaviour_pass_rate < min_behaviour_pass_rate:
        return Verdict.refuse(
            "behaviour_pass_rate_below_minimum",
            f"behavioural pass rate {candidate.behaviour_pass_rate:.4f} < minimum {min_behaviour_pass_rate:.4f}",
        )
    threshold = _threshold(session)
    if threshold is None:
        return Verdict.refuse("model_invalid", f"metadata {META_THRESHOLD} must be a number between 0 and 1")
    if candidate.reference is None:
        return Verdict.refuse("reference_missing", f"the run has no {REFERENCE_ARTIFACT}")
    try:
        reference = Reference.from_dict(candidate.reference)
    except InvalidReference as exc:
        return Verdict.refuse("reference_invalid", f"{REFERENCE_ARTIFACT}: {exc}")
    if reference.model_sha256 != actual:
        return Verdict.refuse("reference_invalid", f"{REFERENCE_ARTIFACT} is of model {reference.model_sha256}")
    if (reference.counts.known_fraction_count > 0) != has_known_fraction(session):
        return Verdict.refuse(
            "reference_invalid", f"{REFERENCE_ARTIFACT} and the model disagree on whether it reports known_fraction"
        )
    return Verdict(True, threshold=threshold, reference=reference)


def _threshold(session: Any) -> float | None:
    raw = session.get_modelmeta().custom_metadata_map.get(META_THRESHOLD)
    if raw is None:
        return DEFAULT_THRESHOLD
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0.0 < value < 1.0 else None


def _check_golden(session: Any, golden: dict[str, Any] | None, tolerance: float) -> Verdict:
    texts = (golden or {}).get("texts")
    expected = (golden or {}).get("probabilities")
    if not isinstance(texts, list) or not isinstance(expected, list) or len(texts) != len(expected) or not texts:
        return Verdict.refuse("golden_outputs_missing", f"{GOLDEN_OUTPUTS_ARTIFACT} is missing or malformed")
    try:
        got = probabilities(session, [str(t) for t in texts])
    except Exception as exc:  # onnxruntime's runtime errors: the graph cannot run on ordinary texts
        return Verdict.refuse("model_invalid", f"the model fails on the golden texts: {exc}")
    difference = np.abs(got.astype(np.float64) - np.asarray(expected, dtype=np.float64))
    worst = int(np.nanargmax(difference)) if np.isfinite(difference).any() else 0
    if not np.all(np.isfinite(difference)) or difference[worst] > tolerance:
        return Verdict.refuse(
            "golden_outputs_not_reproduced",
            f"max |onnx - golden| = {difference[worst]:.3g} > {tolerance:g} on text #{worst}",
        )
    return Verdict(True)
