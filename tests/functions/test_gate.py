"""The deploy gate on a real registered version (MLflow server), and every way a candidate is refused."""

from __future__ import annotations

import dataclasses

import pytest

from sentiment_core.contract import MODEL_NAME, PRODUCTION_ALIAS
from sentiment_core.manifest import sha256_bytes
from sentiment_core.monitoring import Reference
from sentiment_core.registry import RegistryClient, RegistryError
from tests.functions.conftest import watcher_module, wrong_shape_onnx

gate = watcher_module("gate")


@pytest.fixture(scope="module")
def registry(trained) -> RegistryClient:
    return RegistryClient(trained["tracking_uri"], timeout=10)


@pytest.fixture(scope="module")
def candidate(registry: RegistryClient):
    version = registry.version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)
    return gate.fetch_candidate(registry, version)


def with_model(candidate, model_bytes: bytes):
    """The candidate with other bytes whose sha256 the run 'logged', so only the later checks can refuse it."""
    return dataclasses.replace(candidate, model_bytes=model_bytes, logged_sha256=sha256_bytes(model_bytes))


def test_fetch_candidate_reads_model_sha_golden_outputs_accuracy_reference_and_calibration(candidate, trained) -> None:
    assert candidate.version.run_id == trained["run_id"]
    assert len(candidate.model_bytes) == trained["model_size_bytes"]
    assert candidate.logged_sha256 == sha256_bytes(candidate.model_bytes)
    assert len(candidate.golden["texts"]) >= 50
    assert candidate.val_accuracy > 0.9
    assert 0.0 <= candidate.calibration_error < 0.05
    assert 0.8 <= candidate.behaviour_pass_rate <= 1.0
    assert candidate.reference["source"] == "validation"


def test_judge_accepts_the_trained_version_and_hands_on_its_reference(candidate) -> None:
    verdict = gate.judge(candidate, min_val_accuracy=0.9)

    assert verdict == gate.Verdict(True, reference=Reference.from_dict(candidate.reference))
    assert verdict.reference.predictions == sum(candidate.reference["probability_histogram"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: dataclasses.replace(c, model_bytes=None), "model_missing"),
        (lambda c: dataclasses.replace(c, logged_sha256="0" * 64), "sha256_mismatch"),
        (lambda c: dataclasses.replace(c, logged_sha256=None), "sha256_not_logged"),
        (lambda c: with_model(c, c.model_bytes[: len(c.model_bytes) // 2]), "model_invalid"),
        (lambda c: with_model(c, b"not an onnx file"), "model_invalid"),
        (lambda c: with_model(c, wrong_shape_onnx()), "model_invalid"),
        (lambda c: dataclasses.replace(c, golden=None), "golden_outputs_missing"),
        (
            lambda c: dataclasses.replace(
                c, golden={**c.golden, "probabilities": [p + 2e-4 for p in c.golden["probabilities"]]}
            ),
            "golden_outputs_not_reproduced",
        ),
        (lambda c: dataclasses.replace(c, val_accuracy=0.5), "validation_accuracy_below_minimum"),
        (lambda c: dataclasses.replace(c, val_accuracy=None), "validation_accuracy_missing"),
        (lambda c: dataclasses.replace(c, calibration_error=0.06), "calibration_error_above_maximum"),
        (lambda c: dataclasses.replace(c, calibration_error=None), "calibration_error_missing"),
        (lambda c: dataclasses.replace(c, behaviour_pass_rate=0.5), "behaviour_pass_rate_below_minimum"),
        (lambda c: dataclasses.replace(c, behaviour_pass_rate=None), "behaviour_pass_rate_missing"),
        (lambda c: dataclasses.replace(c, reference=None), "reference_missing"),
        (lambda c: dataclasses.replace(c, reference={**c.reference, "positive": -1}), "reference_invalid"),
        (lambda c: dataclasses.replace(c, reference=[1, 2]), "reference_invalid"),
        (lambda c: dataclasses.replace(c, reference={**c.reference, "model_sha256": "b" * 64}), "reference_invalid"),
        (lambda c: dataclasses.replace(c, reference={**c.reference, "model_sha256": None}), "reference_invalid"),
        (
            lambda c: dataclasses.replace(
                c, reference={**c.reference, "known_fraction_sum": 0, "known_fraction_count": 0}
            ),
            "reference_invalid",
        ),
    ],
    ids=[
        "missing",
        "sha-mismatch",
        "sha-not-logged",
        "truncated",
        "not-onnx",
        "wrong-shape",
        "no-golden",
        "golden-moved",
        "low-accuracy",
        "no-accuracy",
        "badly-calibrated",
        "no-calibration-error",
        "behaves-badly",
        "no-behaviour-pass-rate",
        "no-reference",
        "reference-negative-count",
        "reference-not-an-object",
        "reference-of-another-model",
        "reference-of-no-model",
        "reference-without-the-models-known-fraction",
    ],
)
def test_judge_refuses_with_the_reason(candidate, change, reason: str) -> None:
    verdict = gate.judge(change(candidate), min_val_accuracy=0.9)

    assert (verdict.accepted, verdict.reason) == (False, reason)
    assert verdict.detail


def test_judge_takes_the_behaviour_minimum_it_is_given(candidate) -> None:
    rate = candidate.behaviour_pass_rate

    assert gate.judge(candidate, 0.9, min_behaviour_pass_rate=rate).accepted
    assert (
        gate.judge(candidate, 0.9, min_behaviour_pass_rate=rate + 0.001).reason == "behaviour_pass_rate_below_minimum"
    )


def test_judge_takes_the_calibration_maximum_it_is_given(candidate) -> None:
    error = candidate.calibration_error

    assert gate.judge(candidate, 0.9, max_calibration_error=error).accepted
    assert gate.judge(candidate, 0.9, max_calibration_error=error * 0.99).reason == "calibration_error_above_maximum"


def test_registry_download_missing_artifact_is_file_not_found(registry, candidate) -> None:
    run = registry.run(candidate.version.run_id)

    with pytest.raises(FileNotFoundError):
        registry.download(run.artifact_uri, "no/such/file.json")
    with pytest.raises(RegistryError, match="mlflow-artifacts"):
        registry.download("gs://bucket/path", "model.onnx")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.run("0" * 32)
