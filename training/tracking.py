"""Everything MLflow: lineage, metrics, plots, the ONNX model, golden outputs, registration and promotion."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec

from sentiment_core.contract import (
    GOLDEN_OUTPUTS_ARTIFACT,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    PRODUCTION_ALIAS,
    RUN_TAG_MODEL_SHA256,
)
from training.data import REPO_ROOT, Dataset, Split

# Fail in seconds, not minutes, when the tracking server is down (MLflow's defaults retry for ~4 min).
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
SERVING_REQUIREMENTS = ["onnxruntime==1.32.0"]
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(object), (-1,), INPUT_NAME)]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), OUTPUT_NAME)]),
)


class TrackingError(RuntimeError):
    """The tracking server cannot be used."""


def connect(tracking_uri: str | None, experiment: str) -> str:
    """Point MLflow at the store, check that it answers, select the experiment; returns the URI in use."""
    for key, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:  # MLflow raises MlflowException, requests' and OS errors here
        raise TrackingError(f"cannot reach the MLflow tracking store at {uri}: {exc}") from exc
    return uri


def git_commit() -> tuple[str, bool] | None:
    """The repository's HEAD commit and whether the work tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit, bool(status.strip())


def log_lineage(dataset: Dataset, split: Split) -> None:
    """Each source file as a run input with its sha256, the data report, and the split membership."""
    for report in dataset.reports:
        with warnings.catch_warnings():
            # MLflow registers LocalArtifactDatasetSource twice and then warns that its own choice is ambiguous.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(report.uri)
        name = report.uri.split("#", 1)[0].rsplit("/", 1)[-1]  # the file's name; its generation is in the source
        # MLflow's dataset digest column holds 36 characters; the full sha256 is in the data report.
        mlflow.log_input(MetaDataset(source=source, name=name, digest=report.sha256[:36]), context="training")
    summary = dataset.summary()
    mlflow.log_metrics({f"data_{key}": float(value) for key, value in summary.items()})
    mlflow.log_dict(
        {
            "training_data_sha256": dataset.sha256,
            "label_rule": dataset.label_rule.describe(),
            "summary": summary,
            "sources": [report.__dict__ for report in dataset.reports],
            "split": {"method": "stratified by label, seeded blake2b order", "seed": split.seed, **split.sizes()},
        },
        "data/report.json",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.csv.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(_split_membership(split, dataset.texts))
        mlflow.log_artifact(str(path), "data")


def _split_membership(split: Split, texts: Sequence[str]) -> str:
    """One line per example: a short hash of its text and its part; small enough to keep with every run."""
    lines = ["text_sha1,split"]
    for part in ("train", "validation", "test"):
        for index in getattr(split, part):
            lines.append(f"{hashlib.sha1(texts[index].encode()).hexdigest()[:16]},{part}")
    return "\n".join(lines) + "\n"


def log_figure(figure: Figure, path: str) -> None:
    mlflow.log_figure(figure, path)


def log_onnx_model(model_bytes: bytes, golden: dict[str, Any]) -> str:
    """Log model.onnx with a signature and input example; returns the logged model's URI."""
    import onnx  # already imported by the exporter; local to keep this module's import cheap elsewhere

    info = mlflow.onnx.log_model(
        onnx.load_from_string(model_bytes),
        name="model",
        signature=SIGNATURE,
        input_example={INPUT_NAME: np.array(["great food", "terrible service"], dtype=object)},
        pip_requirements=SERVING_REQUIREMENTS,
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
        metadata={"model_sha256": hashlib.sha256(model_bytes).hexdigest()},
    )
    mlflow.set_tag(RUN_TAG_MODEL_SHA256, hashlib.sha256(model_bytes).hexdigest())
    mlflow.log_dict(golden, GOLDEN_OUTPUTS_ARTIFACT)
    return info.model_uri


def register(model_uri: str, tags: dict[str, str], timeout_s: float = 120.0) -> ModelVersion:
    """Add a version of the registered model and wait until it is READY."""
    version = mlflow.register_model(model_uri, MODEL_NAME, tags=tags, await_registration_for=0)
    client = MlflowClient()
    deadline = time.monotonic() + timeout_s
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise TrackingError(f"registration of {MODEL_NAME} v{version.version} ended as {version.status}")
        time.sleep(0.2)
        version = client.get_model_version(MODEL_NAME, version.version)
    return version


def promote(version: str) -> None:
    """Point the alias `production` at a version: what a person does in the MLflow UI."""
    MlflowClient().set_registered_model_alias(MODEL_NAME, PRODUCTION_ALIAS, version)
