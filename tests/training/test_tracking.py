"""What one real training run leaves in a real MLflow server (the session's `trained_full` run)."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sentiment_core.contract import (
    GOLDEN_OUTPUTS_ARTIFACT,
    MODEL_NAME,
    PRODUCTION_ALIAS,
    REFERENCE_ARTIFACT,
    RUN_TAG_MODEL_SHA256,
    VALIDATION_ACCURACY_METRIC,
)
from sentiment_core.manifest import read_staged_folder, sha256_file
from sentiment_core.monitoring import Reference
from training import behaviour


@pytest.fixture
def client(trained_full: dict) -> MlflowClient:
    mlflow.set_tracking_uri(trained_full["tracking_uri"])
    return MlflowClient(trained_full["tracking_uri"])


def test_run_logs_params_per_epoch_metrics_and_test_metrics(client: MlflowClient, trained_full: dict) -> None:
    run = client.get_run(trained_full["run_id"])

    assert {
        "embedding_dim",
        "epochs",
        "learning_rate",
        "seed",
        "label_rule",
        "vocabulary_size",
    } <= run.data.params.keys()
    assert run.data.params["label_rule"] == "stars>=3"
    epochs = int(run.data.params["epochs"])
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_roc_auc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == list(range(1, epochs + 1))
    assert {
        "test_accuracy",
        "test_roc_auc",
        "test_f1",
        "data_malformed",
        "onnx_max_abs_diff_validation",
        VALIDATION_ACCURACY_METRIC,
    } <= (run.data.metrics.keys())
    assert run.data.metrics["onnx_max_abs_diff_validation"] <= 1e-5


def test_run_records_data_lineage_and_git_commit(client: MlflowClient, trained_full: dict) -> None:
    run = client.get_run(trained_full["run_id"])
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "data/report.json")).read_text())

    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    sources = {Path(s["uri"]).name: s["sha256"] for s in report["sources"]}
    assert digests == {name: sha[:36] for name, sha in sources.items()}
    assert sources["reviews.jsonl"] == sha256_file(Path(report["sources"][0]["uri"]).parent / "reviews.jsonl")
    assert report["training_data_sha256"] == run.data.params["training_data_sha256"]
    assert report["split"]["train"] + report["split"]["validation"] + report["split"]["test"] == 178_107
    assert len(run.data.tags.get("mlflow.source.git.commit", "")) == 40


def test_run_logs_plots_split_and_golden_outputs(client: MlflowClient, trained_full: dict) -> None:
    run_id = trained_full["run_id"]
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    golden = json.loads(Path(client.download_artifacts(run_id, GOLDEN_OUTPUTS_ARTIFACT)).read_text())

    assert {"plots/confusion_test.png", "plots/roc_pr_test.png", "plots/confusion_validation.png"} <= artifacts
    assert [a.path for a in client.list_artifacts(run_id, "data")] == ["data/report.json", "data/split.csv.gz"]
    assert len(golden["texts"]) >= 50
    assert len(golden["probabilities"]) == len(golden["texts"])
    assert golden["max_abs_diff_onnx"] <= 1e-5


def test_logged_model_has_signature_input_example_and_logged_sha256(client: MlflowClient, trained_full: dict) -> None:
    local = Path(mlflow.artifacts.download_artifacts(trained_full["model_uri"]))
    mlmodel = (local / "MLmodel").read_text()

    assert '"name": "text"' in mlmodel
    assert '"name": "probability"' in mlmodel
    assert (local / "input_example.json").is_file()
    assert sha256_file(local / "model.onnx") == client.get_run(trained_full["run_id"]).data.tags[RUN_TAG_MODEL_SHA256]


def test_register_promote_sets_alias_and_version_tags(client: MlflowClient, trained_full: dict) -> None:
    version = client.get_model_version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)

    assert version.version == trained_full["model_version"]
    assert version.run_id == trained_full["run_id"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(trained_full["test_accuracy"], abs=1e-4)
    assert {"val_accuracy", "test_roc_auc", "model_sha256", "label_rule"} <= version.tags.keys()


def test_production_alias_model_runs_in_plain_onnxruntime_without_project_code(
    trained_full: dict, tmp_path: Path
) -> None:
    """What a user does: fetch models:/yelp-sentiment@production and run it, nothing of ours imported."""
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@{PRODUCTION_ALIAS}", dst_path=tmp_path))
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "sess = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "p = sess.run(['probability'], {'text': np.array(['great food', 'awful, rude, dirty'], dtype=object)})[0]\n"
        "assert 'training' not in sys.modules and 'sentiment_core' not in sys.modules\n"
        "print(p[0], p[1])\n"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(local / "model.onnx")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )

    positive, negative = map(float, result.stdout.split())
    assert positive > 0.5 > negative


def test_run_logs_calibration_and_the_reference_of_its_own_model(client: MlflowClient, trained_full: dict) -> None:
    run = client.get_run(trained_full["run_id"])
    metrics = run.data.metrics
    reference = Reference.from_dict(
        json.loads(Path(client.download_artifacts(run.info.run_id, REFERENCE_ARTIFACT)).read_text())
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}

    assert 0.0 < metrics["test_expected_calibration_error"] <= 0.05
    assert metrics["val_expected_calibration_error"] <= metrics["val_expected_calibration_error_uncalibrated"]
    assert metrics["calibration_temperature"] > 0
    assert "plots/reliability_validation.png" in artifacts
    assert reference.model_sha256 == run.data.tags["model_sha256"]
    assert reference.expected_calibration_error == pytest.approx(metrics["test_expected_calibration_error"])
    assert reference.predictions > 10_000  # the whole validation split
    assert reference.counts.known_fraction_count == reference.predictions  # the model reports known_fraction


def test_run_logs_the_behavioural_suite_per_capability_and_case(client: MlflowClient, trained_full: dict) -> None:
    run = client.get_run(trained_full["run_id"])
    metrics = run.data.metrics
    cases = json.loads(Path(client.download_artifacts(run.info.run_id, "behaviour/cases.json")).read_text())
    capabilities = json.loads(
        Path(client.download_artifacts(run.info.run_id, "behaviour/capabilities.json")).read_text()
    )

    assert 0.8 <= metrics["behaviour_pass_rate"] <= 1.0
    assert len(cases["data"]) == len(behaviour.cases())
    named = {row[0] for row in capabilities["data"]}
    assert named == {case.capability for case in behaviour.cases()}
    assert {f"behaviour_pass_rate/{behaviour.slug(name)}" for name in named} <= set(metrics)


def test_staged_folder_matches_registered_version(trained_full: dict) -> None:
    manifest, model_bytes = read_staged_folder(Path(trained_full["staged_dir"]))
    assert manifest.reference_sha256 is not None  # read_staged_folder checked reference.json against it

    assert manifest.model_name == MODEL_NAME
    assert manifest.model_version == trained_full["model_version"]
    assert manifest.mlflow_run_id == trained_full["run_id"]
    assert manifest.threshold == 0.5
    assert len(model_bytes) == trained_full["model_size_bytes"] <= 50 * 1024 * 1024


def test_training_reports_progress_and_finishes(trained_full: dict) -> None:
    assert "vocabulary:" in trained_full["stderr"]
    assert "registered yelp-sentiment version" in trained_full["stderr"]
    assert trained_full["test_accuracy"] > 0.9
