"""The retrain check as deployed: functions-framework (gunicorn) with only its own settings, the local runner
running a stand-in command, the emulators and a real MLflow server; and its settings, parsed once, failing fast."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localdev import services
from sentiment_core.config import ConfigError
from sentiment_core.http import ApiError
from sentiment_core.registry import RegistryError
from tests.functions.conftest import call, retrain_module
from tests.support import PROJECT

retrain_service = retrain_module("retrain_service")

SETTINGS = {
    "GOOGLE_CLOUD_PROJECT": "p",
    "DATA_URI": "gs://training-data/yelp-sentiment/",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "TRAINING_JOB": "projects/p/locations/europe-west1/jobs/train",
}
LOCAL = {"RETRAIN_RUNNER": "local", "LOCAL_TRAINING_DIR": "/tmp/runs", "LOCAL_TRAINING_CWD": "/repo"}


@pytest.mark.unit
def test_retrain_settings_defaults_follow_the_contract() -> None:
    settings = retrain_service.Settings.from_env(SETTINGS)

    assert (settings.runner, settings.training_job, settings.auto_promote) == (
        "cloud_run",
        SETTINGS["TRAINING_JOB"],
        "never",
    )
    assert (settings.policy.min_interval_s, settings.policy.backoff_s, settings.policy.timeout_s) == (3600, 600, 7200)
    assert (settings.export.min_feedback, settings.export.interval_s) == (100, 86400)
    assert (settings.experiment, settings.data.bucket, settings.data.prefix) == (
        "yelp-sentiment",
        "training-data",
        "yelp-sentiment/",
    )
    assert settings.state.deployments_database == "(default)"


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def tick(self):
        raise self.error


@pytest.mark.unit
@pytest.mark.parametrize(
    ("error", "code"),
    [
        (requests.ConnectionError("connection refused"), "data_unavailable"),  # no answer from the bucket
        (gexc.ServiceUnavailable("listing failed"), "data_unavailable"),
        (RegistryError("MLflow did not answer"), "registry_unavailable"),
    ],
    ids=["transport", "google-api", "mlflow"],
)
def test_retrain_tick_whose_dependency_fails_answers_503_with_its_code(error: Exception, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        retrain_service.handle_tick(None, lambda: _Failing(error))

    assert (raised.value.status, raised.value.code, raised.value.headers) == (503, code, {"Retry-After": "60"})


@pytest.mark.unit
def test_retrain_settings_local_runner_command_runs_this_interpreter() -> None:
    settings = retrain_service.Settings.from_env(SETTINGS | LOCAL)

    assert settings.local_command == (sys.executable, "-m", "training.job")
    assert (settings.local_dir, settings.local_cwd) == (Path("/tmp/runs"), Path("/repo"))
    assert settings.training_job is None  # not needed locally


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"DATA_URI": ""}, "DATA_URI"),
        ({"DATA_URI": "s3://bucket/x/"}, "DATA_URI"),
        ({"MLFLOW_TRACKING_URI": ""}, "MLFLOW_TRACKING_URI"),
        ({"TRAINING_JOB": ""}, "TRAINING_JOB"),
        ({"TRAINING_JOB": "train"}, "TRAINING_JOB"),
        ({"RETRAIN_RUNNER": "vertex"}, "RETRAIN_RUNNER"),
        ({"AUTO_PROMOTE": "always"}, "AUTO_PROMOTE"),
        ({"RETRAIN_MIN_INTERVAL_S": "soon"}, "RETRAIN_MIN_INTERVAL_S"),
        ({"RETRAIN_BACKOFF_S": "0"}, "RETRAIN_BACKOFF_S"),
        ({"RETRAIN_TIMEOUT_S": "-1"}, "RETRAIN_TIMEOUT_S"),
        ({"RETRAIN_MIN_FEEDBACK": "0"}, "RETRAIN_MIN_FEEDBACK"),
        ({"RETRAIN_ARGS": "--tag 'open"}, "RETRAIN_ARGS"),
        ({"GOOGLE_CLOUD_PROJECT": ""}, "GOOGLE_CLOUD_PROJECT"),
        ({**LOCAL, "LOCAL_TRAINING_DIR": ""}, "LOCAL_TRAINING_DIR"),
        ({**LOCAL, "LOCAL_TRAINING_COMMAND": " "}, "LOCAL_TRAINING_COMMAND"),
    ],
)
def test_retrain_settings_missing_or_bad_value_names_the_variable(change: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        retrain_service.Settings.from_env(SETTINGS | change)


def test_retrain_check_tick_starts_the_local_job_and_status_shows_why(
    firestore_emulator, gcs_emulator, mlflow_server, tmp_path: Path
) -> None:
    bucket = f"data-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        client.create_bucket(bucket).blob("yelp-sentiment/yelp/a.jsonl").upload_from_string(
            '{"stars": 5, "text": "ok"}\n'
        )
    runs = tmp_path / "runs"
    # The stand-in job prints what the contract passes it.
    printed = 'os.environ["RETRAIN_EXECUTION"], os.environ["AUTO_PROMOTE"], os.environ["DATA_URI"]'
    command = f"python -c 'import os; print({printed})'"
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "STORAGE_EMULATOR_HOST": gcs_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "MODEL_NAME": f"model-{uuid.uuid4().hex[:8]}",
        "DATA_URI": f"gs://{bucket}/yelp-sentiment/",
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_EXPERIMENT": f"exp-{uuid.uuid4().hex[:8]}",
        "MLFLOW_TIMEOUT_S": "10",
        **LOCAL,
        "LOCAL_TRAINING_DIR": str(runs),
        "LOCAL_TRAINING_CWD": str(tmp_path),
        "LOCAL_TRAINING_COMMAND": command,
    }
    with services.start_function("retrain", tmp_path, env, target="retrain_check", ready_path="/status") as check:
        empty = call(f"{check.url}/status")
        tick = call(f"{check.url}/", {})
        execution = tick.json["execution"]
        deadline = time.monotonic() + 30
        while not (runs / f"{execution}.status").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = call(f"{check.url}/", {})
        status = call(f"{check.url}/status")
        wrong = call(f"{check.url}/status", {})

    assert (empty.status, empty.json["history"], empty.json["state"]["last"]) == (200, [], None)
    assert (tick.status, tick.json["action"], tick.json["name"]) == (200, "started", execution)
    assert tick.json["export"]["exported"] is False  # no answered predictions
    assert (runs / f"{execution}.log").read_text().split() == [execution, "never", env["DATA_URI"]]
    assert finished.json["action"] == "succeeded"
    assert status.json["state"]["last"]["status"] == "succeeded"
    assert [e["kind"] for e in status.json["history"]] == ["succeeded", "started"]
    assert status.json["history"][1]["reason"].startswith("no finished run has fingerprint")
    assert json.loads(json.dumps(status.json))  # timestamps as strings
    assert (wrong.status, wrong.error_code) == (405, "method_not_allowed")
