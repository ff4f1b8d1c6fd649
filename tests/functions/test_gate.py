"""The deploy gate on a real registered version (MLflow server), and every way a candidate is refused."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime

import pytest

from sentiment_core.contract import MODEL_NAME, PRODUCTION_ALIAS
from sentiment_core.deployments import Serving
from sentiment_core.manifest import sha256_bytes
from sentiment_core.monitoring import Reference
from sentiment_core.registry import RegistryClient, RegistryError
from tests.functions.conftest import watcher_module, wrong_shape_onnx
from tests.functions.watcher_support import constant_onnx, eval_set_bytes, forged_records, write_eval_set

gate = watcher_module("gate")
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


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


# The watcher's own evaluation: what the uploading run cannot choose.
evaluation = watcher_module("evaluation")
decisions = watcher_module("watcher_decisions")


@pytest.fixture(scope="module")
def eval_set_uri(tmp_path_factory) -> str:
    return write_eval_set(tmp_path_factory.mktemp("eval"))


def forged(candidate):
    """The attack: a constant-0.99 graph whose run logged its sha256, golden outputs it reproduces, a reference
    naming it and a validation accuracy of 0.99."""
    model = constant_onnx(0.99)
    records = forged_records(model, candidate.golden, candidate.reference)
    return dataclasses.replace(with_model(candidate, model), **records)


def test_judge_accepts_a_constant_graph_whose_run_logged_matching_records(candidate) -> None:
    # Why the evaluation exists: every other check reads what the uploading run logged.
    assert gate.judge(forged(candidate), min_val_accuracy=0.9).accepted


def test_evaluation_refuses_the_constant_graph_and_accepts_the_trained_model(candidate, eval_set_uri) -> None:
    evaluator = evaluation.Evaluator(eval_set_uri)

    attack = evaluator.evaluate(forged(candidate).model_bytes, None)
    trained = evaluator.evaluate(candidate.model_bytes, None)

    limits = decisions.EvalLimits()
    assert decisions.judge_evaluation(attack, limits)[0] == "eval_accuracy_below_minimum"
    assert decisions.judge_evaluation(trained, limits) is None
    assert attack.n == trained.n == 2000
    assert 0.55 < attack.candidate_accuracy < 0.65  # the positive share of the set: it answers positive always
    assert trained.candidate_accuracy >= 0.85


def test_evaluation_scores_the_serving_version_from_its_staged_file(candidate, eval_set_uri, tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(candidate.model_bytes)
    serving = Serving("1", "run-1", sha256_bytes(candidate.model_bytes), f"file://{tmp_path}", "e-1", NOW)
    evaluator = evaluation.Evaluator(eval_set_uri)

    figures = evaluator.evaluate(constant_onnx(0.99), serving)

    assert (figures.serving_version, figures.serving_note) == ("1", None)
    assert figures.serving_accuracy >= 0.85
    limits = decisions.EvalLimits(min_accuracy=0.0)  # only the regression against the serving version refuses
    assert decisions.judge_evaluation(figures, limits)[0] == "eval_accuracy_regression"


@pytest.mark.parametrize(
    ("staged", "note"),
    [(None, "does not exist"), (b"other bytes", "is not the sha256")],
    ids=["staged-file-missing", "staged-file-changed"],
)
def test_evaluation_of_an_unreadable_serving_version_is_noted_not_compared(
    candidate, eval_set_uri, tmp_path, staged, note: str
) -> None:
    if staged is not None:
        (tmp_path / "model.onnx").write_bytes(staged)
    serving = Serving("1", "run-1", sha256_bytes(candidate.model_bytes), f"file://{tmp_path}", "e-1", NOW)

    figures = evaluation.Evaluator(eval_set_uri).evaluate(constant_onnx(0.5), serving)

    assert (figures.serving_version, figures.serving_accuracy) == ("1", None)
    assert note in figures.serving_note


def test_evaluator_reads_the_set_once_and_again_when_it_changes(candidate, tmp_path) -> None:
    path = tmp_path / "eval.jsonl"
    rows = [json.loads(line) for line in eval_set_bytes().splitlines()]
    path.write_bytes(eval_set_bytes())
    evaluator = evaluation.Evaluator(f"file://{path}")

    first = evaluator.eval_set()
    assert evaluator.eval_set() is first  # unchanged: not read or parsed again
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[:500]))
    second = evaluator.eval_set()

    assert (first.n, second.n) == (2000, 500)
    assert second.sha256 != first.sha256
    assert evaluator.evaluate(candidate.model_bytes, None).eval_set_sha256 == second.sha256


def test_evaluator_reads_a_gcs_object(gcs_emulator, monkeypatch) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-test")
    bucket = storage.Client(project="demo-test", credentials=AnonymousCredentials()).create_bucket(
        f"eval-{uuid.uuid4().hex[:8]}"
    )
    bucket.blob("m/eval.jsonl").upload_from_string(eval_set_bytes())
    evaluator = evaluation.Evaluator(f"gs://{bucket.name}/m/eval.jsonl")

    assert evaluator.eval_set().n == 2000
    with pytest.raises(evaluation.EvaluationUnavailable, match="does not exist"):
        evaluation.Evaluator(f"gs://{bucket.name}/m/missing.jsonl").eval_set()


def test_evaluator_without_its_set_is_unavailable(tmp_path) -> None:
    with pytest.raises(evaluation.EvaluationUnavailable, match="does not exist"):
        evaluation.Evaluator(f"file://{tmp_path}/eval.jsonl").evaluate(b"", None)


GOOD_ROWS = "".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(100))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (GOOD_ROWS + "{not json\n", "line 101 is not JSON"),
        (GOOD_ROWS + '{"text": "a"}\n', "line 101 is not"),
        (GOOD_ROWS + '{"text": "a", "label": 2}\n', "line 101 is not"),
        (GOOD_ROWS + '{"text": "a", "label": true}\n', "line 101 is not"),
        (GOOD_ROWS + '{"text": "  ", "label": 1}\n', "line 101 is not"),
        (GOOD_ROWS + "[1, 2]\n", "line 101 is not"),
        (GOOD_ROWS.split("\n", 1)[1], "99 examples, fewer than 100"),
        ("".join(json.dumps({"text": f"t {i}", "label": 1}) + "\n" for i in range(100)), "one class only"),
    ],
    ids=[
        "not-utf8",
        "not-json",
        "no-label",
        "label-2",
        "label-bool",
        "blank-text",
        "not-an-object",
        "too-few",
        "one-class",
    ],
)
def test_parse_eval_set_refuses_what_cannot_judge(raw, message: str) -> None:
    with pytest.raises(evaluation.EvaluationUnavailable, match=message):
        evaluation.parse_eval_set(raw.encode() if isinstance(raw, str) else raw, "gs://b/eval.jsonl")


def test_parse_eval_set_reads_rows_and_skips_blank_lines() -> None:
    parsed = evaluation.parse_eval_set((GOOD_ROWS + "\n\n").encode(), "gs://b/eval.jsonl")

    assert (parsed.n, parsed.texts[1], list(parsed.labels[:3])) == (100, "text 1", [0, 1, 0])
