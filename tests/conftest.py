"""Session fixtures: real servers (MLflow, GCS emulator) and one model trained on the default data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from localdev import services
from training.data import DEFAULT_DATA_DIR, REPO_ROOT

# The functions' test settings (tests/functions, tests/frontend).
PROJECT = "demo-functions-test"
SECRET = "test-secret-0123456789abcdef"
ORIGIN = "https://reviews.example"
STORE_TIMEOUT_S = 2.0


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_firestore_emulator(tmp_path_factory.mktemp("firestore")) as service:
        yield service


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_pubsub_emulator(tmp_path_factory.mktemp("pubsub"), PROJECT) as service:
        yield service


@pytest.fixture(scope="session")
def function_env(firestore_emulator: services.Service, trained: dict) -> dict[str, str]:
    return {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FEEDBACK_TOKEN_SECRET": SECRET,
        "ALLOWED_ORIGINS": f"{ORIGIN},http://localhost:8000",
        "FIRESTORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
        "MODEL_URI": f"file://{trained['staged_dir']}",
    }


@pytest.fixture(scope="session")
def db(firestore_emulator: services.Service) -> firestore.Client:
    """A client of the emulator for the tests' own reads (not the code under test)."""
    import os

    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_emulator.url
    try:
        return firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    finally:
        del os.environ["FIRESTORE_EMULATOR_HOST"]


@pytest.fixture
def clean_db(firestore_emulator: services.Service, db: firestore.Client) -> firestore.Client:
    """Every document deleted, through the emulator's reset endpoint."""
    url = f"http://{firestore_emulator.url}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()
    return db


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """Tests may set variables; none leaks into the next test."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def default_data_dir() -> Path:
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.fail(f"the review data is expected at {DEFAULT_DATA_DIR} (../shared/data/yelp beside the repository)")
    return DEFAULT_DATA_DIR


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    """A real MLflow tracking server (SQLite backend, proxied local artifacts) for the whole session."""
    with services.start_mlflow(tmp_path_factory.mktemp("mlflow")) as service:
        yield service


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_gcs_emulator(tmp_path_factory.mktemp("gcs")) as service:
        yield service


def run_training(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m training.train ARGS` in a child process, exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "training.train", "--quiet", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="session")
def trained(mlflow_server: services.Service, default_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full run on the default data against the server: registered, promoted and staged."""
    staged = tmp_path_factory.mktemp("staged") / "model"
    result = run_training(["--tracking-uri", mlflow_server.url, "--register", "--promote", "--output-dir", str(staged)])
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {**summary, "staged_dir": staged, "stderr": result.stderr, "tracking_uri": mlflow_server.url}
