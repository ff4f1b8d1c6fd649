"""Continuous training on the local stack, end to end (docs/retraining.md): new reviews in the data bucket start one
training run through the retrain check; the run lists the new file among its inputs, registers a challenger with
its report and tags, and promotes nothing by default; the same data again starts nothing; with AUTO_PROMOTE=canary
a challenger that wins gets the alias and the progressive rollout starts.

The champion is weak on purpose: the bucket starts small (600 reviews) and the champion is trained on it by the
job's own entry point, as `make demo` does, so that its run carries the data's fingerprint; the check's runs then
train on up to 6,000 (RETRAIN_ARGS, one epoch) of the grown bucket, so a challenger wins clearly.
The deploy gate's thresholds are lowered: the gate is not what this module tests, the rollout must start.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from mlflow.tracking import MlflowClient

from tests.functions.conftest import call
from tests.localdev.stack_support import running_stack, stack_command, wait_for_version, watcher_status
from training.data import DEFAULT_DATA_DIR, REPO_ROOT

MODEL = "yelp-sentiment"
SETTINGS = {
    "LOCAL_TICK_INTERVAL_S": "2",
    # Ticked by hand at first (the first model is the test's own, as `make demo` trains it on a fresh stack);
    # the second test restarts the stack with the scheduler ticking the check every 3 s.
    "LOCAL_RETRAIN_INTERVAL_S": "0",
    "RETRAIN_MIN_INTERVAL_S": "0",
    "RETRAIN_ARGS": "--limit 6000 --epochs 1",
    "ROLLOUT_STEPS": "50,100",
    "ROLLOUT_BAKE_S": "5",
    "ROLLOUT_MIN_FEEDBACK": "0",
    "LOCAL_MIN_VALIDATION_ACCURACY": "0",
    "MIN_EVAL_ACCURACY": "0",
    "MAX_EVAL_REGRESSION": "1",
    "MAX_CALIBRATION_ERROR": "1",
    "MIN_BEHAVIOUR_PASS_RATE": "0",
}
RUN_WITHIN_S = 600.0  # deadlines for "it happens", not figures: a run trains for about a minute here
SCHEDULED = {"LOCAL_RETRAIN_INTERVAL_S": "3"}
TWO_TICKS_S = 2 * float(SCHEDULED["LOCAL_RETRAIN_INTERVAL_S"]) + 5


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory) -> Iterator[dict]:
    with running_stack(tmp_path_factory.mktemp("retrain-stack"), SETTINGS) as stack:
        yield stack


def urls_of(stack: dict) -> dict:
    return json.loads((stack["state"] / "stack.json").read_text())


def data_bucket(urls: dict) -> tuple[storage.Bucket, str]:
    os.environ["STORAGE_EMULATOR_HOST"] = urls["storage_emulator"]
    bucket, _, prefix = urls["data_bucket"].removeprefix("gs://").partition("/")
    return storage.Client(project="demo-local", credentials=AnonymousCredentials()).bucket(bucket), prefix


def reviews(start: int, stop: int) -> bytes:
    """Real reviews of the default data, lines start to stop: new to a bucket that never held them."""
    lines = (DEFAULT_DATA_DIR / "reviews.jsonl").read_bytes().splitlines()[start:stop]
    return b"\n".join(lines) + b"\n"


def start_small(bucket: storage.Bucket, prefix: str) -> None:
    """The bucket as a young deployment's: 600 reviews (the default data staged at `up` removed)."""
    for blob in bucket.list_blobs(prefix=f"{prefix}yelp/"):
        blob.delete()
    bucket.blob(f"{prefix}first/reviews.jsonl").upload_from_string(reviews(0, 600))


def train_champion(urls: dict) -> str:
    """The first model as `make demo` trains it: the job's entry point on the bucket, promoted; its version."""
    result = subprocess.run(
        [sys.executable, "-m", "training.job", "--", "--promote"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DATA_URI": urls["data_bucket"],
            "STORAGE_EMULATOR_HOST": urls["storage_emulator"],
            "GOOGLE_CLOUD_PROJECT": "demo-local",
            "MLFLOW_TRACKING_URI": urls["mlflow"],
            "RETRAIN_ARGS": SETTINGS["RETRAIN_ARGS"],
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(json.loads(result.stdout.strip().splitlines()[-1])["model_version"])


def tick(urls: dict) -> dict:
    answer = call(urls["retrain"], {}, timeout=120)
    assert answer.status == 200, answer.raw
    return answer.json


def retrain_status(urls: dict) -> dict:
    answer = call(f"{urls['retrain']}/status")
    assert answer.status == 200, answer.raw
    return answer.json


def wait_for(predicate, what: str, timeout_s: float, urls: dict, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}; the check says {json.dumps(retrain_status(urls))}")


def ended(urls: dict, execution: str, ticked: bool = False) -> dict | None:
    """The execution's record once it ended; ticked: check now (no scheduler ticks the check)."""
    if ticked:
        tick(urls)
    last = retrain_status(urls)["state"]["last"] or {}
    return last if last.get("id") == execution and last.get("status") != "running" else None


def run_of(client: MlflowClient, execution: str):
    runs = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id], f"tags.retrain_execution = '{execution}'"
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def version_of(client: MlflowClient, run_id: str):
    (version,) = client.search_model_versions(f"name = '{MODEL}' and run_id = '{run_id}'")
    return version


def test_new_reviews_in_the_bucket_train_one_challenger_that_is_judged_and_not_promoted(local_stack) -> None:
    urls = urls_of(local_stack)
    client = MlflowClient(urls["mlflow"])
    bucket, prefix = data_bucket(urls)
    start_small(bucket, prefix)
    champion = train_champion(urls)
    wait_for_version(urls, champion, 180)
    assert tick(urls)["action"] == "up_to_date"  # the champion's run carries the data's fingerprint
    raw = reviews(600, 5600)

    bucket.blob(f"{prefix}new/december-1.jsonl").upload_from_string(raw)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four checks at once, as two schedulers might
        answers = list(pool.map(lambda _: tick(urls), range(4)))
    started = retrain_status(urls)["state"]["last"]
    finished = wait_for(lambda: ended(urls, started["id"], True), "the run ends", RUN_WITHIN_S, urls, interval_s=2)

    assert sorted(a["action"] for a in answers) == ["running", "running", "running", "started"], answers
    assert {a["execution"] for a in answers} == {started["id"]}
    assert finished["status"] == "succeeded", finished
    starts = [e for e in retrain_status(urls)["history"] if e["kind"] == "started"]
    assert [e["execution"] for e in starts] == [started["id"]]  # one run for the upload, whoever ticked
    run = run_of(client, started["id"])
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="data/report.json", tracking_uri=urls["mlflow"]
            )
        ).read_text()
    )
    sources = {s["uri"].split("#")[0]: s for s in report["sources"]}
    new_uri = f"gs://{bucket.name}/{prefix}new/december-1.jsonl"

    assert inputs["december-1.jsonl"] == hashlib.sha256(raw).hexdigest()[:36]
    assert sources[new_uri]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert sources[new_uri]["lines"] == 5000
    assert sources[new_uri]["used"] > 4000  # less the evaluation set's texts (held out) and repeats
    version = version_of(client, run.info.run_id)
    assert version.tags["challenger_of"] == champion
    assert version.tags["beats_champion"] in ("true", "false")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "challenger")}
    assert {"challenger/report.json", "challenger/report.md", "challenger/accuracy.png"} <= artifacts
    assert client.get_model_version_by_alias(MODEL, "production").version == champion  # AUTO_PROMOTE=never

    again = tick(urls)

    assert again["action"] == "up_to_date", again
    assert retrain_status(urls)["state"]["last"]["id"] == started["id"]  # the same data: nothing started


def test_with_auto_promote_canary_a_winning_challenger_gets_the_alias_and_a_rollout_starts(local_stack) -> None:
    env = {**local_stack["env"], **SCHEDULED, "AUTO_PROMOTE": "canary"}
    assert stack_command("down", local_stack["env"]).returncode == 0
    up = stack_command("up", env)
    assert up.returncode == 0, up.stdout + up.stderr
    urls = urls_of(local_stack)
    client = MlflowClient(urls["mlflow"])
    champion = client.get_model_version_by_alias(MODEL, "production").version
    bucket, prefix = data_bucket(urls)

    bucket.blob(f"{prefix}new/december-2.jsonl").upload_from_string(reviews(5600, 8000))
    started = wait_for(  # the scheduler's ticks, no one else's
        lambda: (
            (retrain_status(urls)["state"]["last"] or {}).get("status") == "running"
            and retrain_status(urls)["state"]["last"]
        ),
        "the scheduler starts a run after the upload",
        TWO_TICKS_S,
        urls,
        interval_s=0.2,
    )
    execution = started["id"]
    finished = wait_for(lambda: ended(urls, execution), "the run ends", RUN_WITHIN_S, urls, interval_s=2)

    assert finished["status"] == "succeeded", finished
    version = version_of(client, run_of(client, execution).info.run_id)
    assert (version.tags["challenger_of"], version.tags["beats_champion"]) == (champion, "true")
    assert version.tags["promotion"] == "automatic"
    assert client.get_model_version_by_alias(MODEL, "production").version == version.version
    staged = wait_for(
        lambda: [
            e for e in watcher_status(urls)["history"] if e["kind"] == "staged" and e["version"] == version.version
        ],
        "the watcher stages the automatic promotion",
        120,
        urls,
    )
    assert staged[0]["promotion"] == "automatic"
    kinds = {e["kind"] for e in watcher_status(urls)["history"] if e.get("version") == version.version}
    assert "rollout_started" in kinds, kinds
    wait_for_version(urls, version.version, 120)  # the rollout completes: nothing said the winner is worse
