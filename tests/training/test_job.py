"""The training job (`python -m training.job`): its settings and arguments, then whole runs against the GCS
emulator and an MLflow server of this module's own (these runs move the alias production)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services
from sentiment_core.contract import MODEL_NAME, PRODUCTION_ALIAS
from sentiment_core.training_data import DataLocation, DataObject, TrainingSettings, fingerprint, list_training_data
from tests.support import run_training
from training import data
from training.challenger import AutoPromote
from training.job import JobError, JobSettings, Listing, check_extra, training_argv

LOCATION = "gs://training-data/yelp-sentiment/"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATA_URI must be set"),
        ({"DATA_URI": "/local/folder"}, "gs://<bucket>/<prefix>/"),
        ({"DATA_URI": "gs://bucket/no-slash"}, "gs://<bucket>/<prefix>/"),
        ({"DATA_URI": LOCATION, "AUTO_PROMOTE": "always"}, "AUTO_PROMOTE must be one of never, canary"),
        ({"DATA_URI": LOCATION, "RETRAIN_ARGS": "--epochs '1"}, "RETRAIN_ARGS must be shell words"),
    ],
)
def test_job_settings_bad_environment_raise_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(JobError, match=message):
        JobSettings.from_env(env)


def test_job_settings_defaults_never_promote_and_a_run_by_hand_is_manual() -> None:
    settings = JobSettings.from_env({"DATA_URI": LOCATION})
    by_check = JobSettings.from_env({"DATA_URI": LOCATION, "RETRAIN_EXECUTION": "exec-1", "AUTO_PROMOTE": "canary"})

    assert (settings.auto_promote, settings.trigger, settings.training) == (
        AutoPromote.NEVER,
        "manual",
        TrainingSettings(),
    )
    assert (by_check.auto_promote, by_check.trigger) == (AutoPromote.CANARY, "retrain_check")


def test_training_argv_pins_every_object_then_settings_flags_tags_and_extra_last() -> None:
    settings = JobSettings.from_env(
        {
            "DATA_URI": LOCATION,
            "RETRAIN_ARGS": "--epochs 1 --limit 3000",
            "TRAINING_IMAGE": "img@sha256:ab",
            "RETRAIN_EXECUTION": "exec-7",
            "AUTO_PROMOTE": "canary",
        }
    )
    objects = [
        DataObject("yelp-sentiment/feedback/f.jsonl", "5", "x"),
        DataObject("yelp-sentiment/yelp/r.jsonl", "9", "y"),
    ]

    argv = training_argv(settings, Listing(objects, True, True), "fp", ["--promote"])

    assert argv == [
        *["--data", "gs://training-data/yelp-sentiment/feedback/f.jsonl#5"],
        *["--data", "gs://training-data/yelp-sentiment/yelp/r.jsonl#9"],
        *["--ood-dir", "gs://training-data/yelp-sentiment/ood/"],
        *["--exclude-texts", "gs://training-data/yelp-sentiment/holdout/"],
        *["--quiet", "--epochs", "1", "--limit", "3000"],
        *["--register", "--challenge", "--auto-promote", "canary"],
        *["--tag", "training_fingerprint=fp", "--tag", "trigger=retrain_check"],
        *["--tag", "retrain_execution=exec-7", "--tag", "training_image=img@sha256:ab"],
        "--promote",
    ]


@pytest.mark.parametrize(
    "extra",
    [[], ["--promote"], ["--output-dir", "x", "--checkpoint", "y.pt"], ["--run-name=nightly", "--promote"]],
)
def test_job_extra_arguments_that_only_say_where_results_go_are_accepted(extra: list[str]) -> None:
    check_extra(extra)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--limit", "500"], "'--limit' would change what the model learns: put training options in RETRAIN_ARGS"),
        (["--promote", "--epochs=1"], "'--epochs=1' would change what the model learns"),
        (["--output-dir"], "--output-dir needs a value"),
    ],
)
def test_job_refuses_extra_arguments_that_change_the_model_outside_the_fingerprint(
    extra: list[str], message: str
) -> None:
    with pytest.raises(JobError, match=re.escape(message)):
        check_extra(extra)


def test_training_argv_without_ood_holdout_or_execution_leaves_them_out() -> None:
    settings = JobSettings.from_env({"DATA_URI": LOCATION})

    argv = training_argv(settings, Listing([DataObject("yelp-sentiment/r.csv", "1", "z")], False, False), "fp", [])

    assert "--ood-dir" not in argv
    assert "--exclude-texts" not in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--tag"] == ["training_fingerprint=fp", "trigger=manual"]


# --- whole runs -------------------------------------------------------------------------------------------------

FEEDBACK_ROWS = 60
QUICK = "--limit 3000 --epochs 1 --ensemble 1"


def feedback_rows() -> list[dict]:
    """Answers as the export writes them: short texts, both labels."""
    rows = []
    for i in range(FEEDBACK_ROWS):
        positive = i % 2 == 0
        text = f"{'wonderful friendly staff' if positive else 'rude cold service'} visit {i}"
        rows.append(
            {
                "text": text,
                "label": int(positive),
                "source": "feedback",
                "prediction_id": f"p{i}",
                "answered_at": "2026-12-02T10:00:00Z",
            }
        )
    return rows


@pytest.fixture(scope="module")
def mlflow_of_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_mlflow(tmp_path_factory.mktemp("mlflow-job")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(gcs_emulator: services.Service, default_data_dir: Path) -> dict:
    """A data location like the local stack's: a slice of the default data, feedback, an ood set, held-out hashes."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator.url
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket(f"training-data-{uuid.uuid4().hex[:8]}")
        reviews = (default_data_dir / "reviews.jsonl").read_bytes().splitlines()[:4000]
        excluded = json.loads(reviews[10])["text"].strip()
        prefix = "yelp-sentiment/"
        bucket.blob(prefix + "yelp/reviews.jsonl").upload_from_string(b"\n".join(reviews) + b"\n")
        feedback = "".join(json.dumps(row) + "\n" for row in feedback_rows()).encode()
        bucket.blob(prefix + "feedback/export-1.jsonl").upload_from_string(feedback)
        ood = (data.DEFAULT_OOD_DIR / "dynasent_r2_dev.tsv").read_bytes()
        bucket.blob(prefix + "ood/dynasent_r2_dev.tsv").upload_from_string(ood)
        bucket.blob(prefix + "holdout/eval-set.sha256").upload_from_string(data.text_sha256(excluded) + "\n")
        location = DataLocation(bucket.name, prefix)
        objects = list_training_data(client, location)
    finally:
        del os.environ["STORAGE_EMULATOR_HOST"]
    return {
        "uri": location.uri,
        "emulator": gcs_emulator.url,
        "excluded": excluded,
        "feedback_sha256": hashlib.sha256(feedback).hexdigest(),
        "objects": objects,
    }


def run_job(bucket: dict, tracking_uri: str, **env: str) -> tuple[object, dict]:
    result = run_training(
        [],
        env={
            "DATA_URI": bucket["uri"],
            "STORAGE_EMULATOR_HOST": bucket["emulator"],
            "MLFLOW_TRACKING_URI": tracking_uri,
            "RETRAIN_ARGS": QUICK,
            **env,
        },
        module="training.job",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def champion(mlflow_of_module: services.Service, default_data_dir: Path) -> str:
    """A weak production version: 300 reviews, one epoch."""
    result = run_training(
        [
            *["--data", str(default_data_dir / "reviews.jsonl"), "--limit", "300", "--epochs", "1", "--ensemble", "1"],
            *["--tracking-uri", mlflow_of_module.url, "--promote"],
        ]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return str(json.loads(result.stdout.strip().splitlines()[-1])["model_version"])


@pytest.fixture(scope="module")
def default_run(bucket: dict, mlflow_of_module: services.Service, champion: str) -> dict:
    result, summary = run_job(bucket, mlflow_of_module.url, RETRAIN_EXECUTION="exec-1", TRAINING_IMAGE="img@sha256:1")
    return {"summary": summary, "stderr": result.stderr}


def client_of(server: services.Service):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def test_job_trains_on_feedback_and_logs_it_as_an_input_with_its_sha256(default_run, mlflow_of_module, bucket) -> None:
    client = client_of(mlflow_of_module)
    run = client.get_run(default_run["summary"]["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(Path(client.download_artifacts(run.info.run_id, "data/report.json", tmp)).read_text())

    feedback = [s for s in report["sources"] if s["feedback"]]
    assert len(feedback) == 1
    assert (feedback[0]["format"], feedback[0]["used"]) == ("labelled_json", FEEDBACK_ROWS)
    assert feedback[0]["sha256"] == bucket["feedback_sha256"]
    assert report["summary"]["feedback"] == FEEDBACK_ROWS
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert any(name.startswith("export-1.jsonl") for name in inputs)
    assert feedback[0]["sha256"][:36] in inputs.values()


def test_job_drops_the_held_out_text_before_the_split(default_run, mlflow_of_module, bucket) -> None:
    client = client_of(mlflow_of_module)
    run_id = default_run["summary"]["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(Path(client.download_artifacts(run_id, "data/report.json", tmp)).read_text())
        split = gzip.decompress(Path(client.download_artifacts(run_id, "data/split.csv.gz", tmp)).read_bytes())

    reviews = next(s for s in report["sources"] if s["uri"].split("#")[0].endswith("yelp/reviews.jsonl"))
    assert reviews["held_out"] == 1
    assert report["summary"]["held_out"] == 1
    assert hashlib.sha1(bucket["excluded"].encode()).hexdigest()[:16].encode() not in split


def test_job_tags_the_run_with_the_fingerprint_of_the_listing_trigger_image_and_execution(
    default_run, mlflow_of_module, bucket
) -> None:
    run = client_of(mlflow_of_module).get_run(default_run["summary"]["run_id"])
    expected = fingerprint(bucket["objects"], TrainingSettings(tuple(QUICK.split()), "img@sha256:1"))

    assert run.info.status == "FINISHED"
    assert run.data.tags["training_fingerprint"] == expected == default_run["summary"]["training_fingerprint"]
    assert run.data.tags["trigger"] == "retrain_check"
    assert run.data.tags["retrain_execution"] == "exec-1"
    assert run.data.tags["training_image"] == "img@sha256:1"
    assert run.data.params["feedback_weight"] == "1.0"


def test_job_registers_a_challenger_with_its_report_and_never_moves_the_alias_by_default(
    default_run, mlflow_of_module, champion
) -> None:
    client = client_of(mlflow_of_module)
    summary = default_run["summary"]
    version = client.get_model_version(MODEL_NAME, summary["model_version"])
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "challenger")}
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(summary["run_id"], "challenger/report.json", tmp)
        report = json.loads(Path(path).read_text())
        table = Path(client.download_artifacts(summary["run_id"], "challenger/report.md", tmp)).read_text()

    assert version.tags["challenger_of"] == champion
    assert version.tags["beats_champion"] == str(report["beats_champion"]).lower()
    assert "promotion" not in version.tags
    assert artifacts == {"challenger/report.json", "challenger/report.md", "challenger/accuracy.png"}
    assert [s["name"] for s in report["sets"]] == ["test", "ood_dynasent_r2_dev", "feedback"]
    assert all(row in table for row in ("| test |", "| ood_dynasent_r2_dev |", "| feedback |"))
    metrics = client.get_run(summary["run_id"]).data.metrics
    assert {"challenger_test_accuracy", "champion_test_accuracy", "challenger_feedback_accuracy"} <= set(metrics)
    assert client.get_model_version_by_alias(MODEL_NAME, PRODUCTION_ALIAS).version == champion


def test_job_canary_challenger_that_wins_gets_tagged_then_the_alias(
    default_run, bucket, mlflow_of_module, champion
) -> None:
    client = client_of(mlflow_of_module)

    _, summary = run_job(bucket, mlflow_of_module.url, AUTO_PROMOTE="canary")

    version = client.get_model_version(MODEL_NAME, summary["model_version"])
    assert summary["beats_champion"] is True, summary
    assert summary["auto_promoted"] is True
    assert version.tags["challenger_of"] == champion
    assert version.tags["beats_champion"] == "true"
    assert version.tags["promotion"] == "automatic"
    assert client.get_model_version_by_alias(MODEL_NAME, PRODUCTION_ALIAS).version == summary["model_version"]


def test_job_empty_location_fails_with_a_clear_message(gcs_emulator) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator.url
    name = f"empty-{uuid.uuid4().hex[:8]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)

    result = run_training(
        [],
        env={"DATA_URI": f"gs://{name}/yelp-sentiment/", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        module="training.job",
    )

    assert result.returncode == 2
    assert f"gs://{name}/yelp-sentiment/ holds no training data" in result.stderr


def test_job_help_describes_the_environment(capsys) -> None:
    from training import job

    assert job.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("DATA_URI", "RETRAIN_ARGS", "AUTO_PROMOTE", "training_fingerprint"))


def test_job_without_a_production_version_registers_without_challenger_tags(bucket, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result, summary = run_job(bucket, store)

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version(MODEL_NAME, summary["model_version"])
    assert "challenger_of" not in version.tags
    assert "beats_champion" not in version.tags
    assert summary["beats_champion"] is None
    assert not client.list_artifacts(summary["run_id"], "challenger")
    assert "no production version to compare with" in result.stderr
