"""The whole loop on the local stack (`python -m localdev.stack up`), end to end, and its faults.

Train v1 -> promote -> v1 serves -> predictions and feedback -> train v2 -> the alias moved by the REST call the
MLflow UI makes -> v2 serves while a client keeps sending requests -> statistics per version -> roll back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services
from tests.functions.conftest import call
from tests.functions.watcher_support import Versions
from training.data import REPO_ROOT

SERVE_WITHIN_S = 10.0
MIN_RATE = 20.0


def stack_command(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localdev.stack", command],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory) -> Iterator[dict]:
    state = tmp_path_factory.mktemp("stack")
    env = {
        "LOCAL_STACK_DIR": str(state),
        "LOCAL_MIN_VALIDATION_ACCURACY": "0.6",
        **{f"LOCAL_PORT_{name}": "0" for name in ("MLFLOW", "PREDICT", "FEEDBACK", "REGISTRY_WATCHER", "FRONTEND")},
    }
    up = stack_command("up", env)
    pids = json.loads((state / "pids.json").read_text()) if (state / "pids.json").exists() else {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        urls = json.loads((state / "stack.json").read_text())
        yield {"urls": urls, "pids": pids, "state": state, "env": env}
    finally:
        revisions = state / "logs" / "predict" / "revisions.json"
        revision_pids = json.loads(revisions.read_text()).values() if revisions.exists() else []
        down = stack_command("down", env)
        assert down.returncode == 0, down.stderr
        left = [pid for pid in [*pids.values(), *revision_pids] if services.alive(int(pid))]
        assert left == [], f"processes left after down: {[_command(pid) for pid in left]}"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return str(pid)


def test_stack_writes_the_contract_urls_and_up_again_starts_nothing(local_stack: dict) -> None:
    urls = local_stack["urls"]

    again = stack_command("up", local_stack["env"])
    config = call(f"{urls['frontend']}/config.json").json

    assert sorted(urls) == ["feedback", "frontend", "mlflow", "predict", "registry_watcher"]
    assert again.returncode == 0, again.stderr
    assert json.loads((local_stack["state"] / "pids.json").read_text()) == local_stack["pids"]
    assert config == {"predict_url": urls["predict"], "feedback_url": urls["feedback"]}
    assert call(f"{urls['mlflow']}/health").status == 200
    assert call(f"{urls['feedback']}/statistics").status == 200
    assert call(f"{urls['registry_watcher']}/status").status == 200
    assert call(f"{urls['predict']}/healthz").error_code == "no_revision"  # nothing promoted yet


def train(urls: dict, env: dict, seed: int) -> str:
    """A quick model registered as a new version; its version number."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--quiet",
            "--limit",
            "20000",
            "--epochs",
            "2",
            "--seed",
            str(seed),
            "--tracking-uri",
            urls["mlflow"],
            "--register",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(json.loads(result.stdout.strip().splitlines()[-1])["model_version"])


def promote_as_the_ui_does(urls: dict, version: str, name: str = "yelp-sentiment") -> None:
    """The MLflow UI sets an alias with this request (its ajax-api prefix, same handler as the REST API)."""
    answer = call(
        f"{urls['mlflow']}/ajax-api/2.0/mlflow/registered-models/alias",
        {"name": name, "alias": "production", "version": version},
    )
    assert answer.status == 200, answer.raw


def serving_version(urls: dict) -> str | None:
    answer = call(f"{urls['predict']}/healthz", timeout=5)
    return (answer.json or {}).get("model_version") if answer.status == 200 else None


def wait_for_version(urls: dict, version: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if serving_version(urls) == version:
            return time.monotonic() - started
        time.sleep(0.1)
    status = call(f"{urls['registry_watcher']}/status").json
    raise AssertionError(f"version {version} not serving after {timeout_s} s: {json.dumps(status)[:3000]}")


class Load:
    """Clients sending predictions through predict's stable URL, recording every answer."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.answers: list[tuple[int, str | None, str | None]] = []  # (status, model version, prediction id)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            answer = call(self.url, {"text": f"client {client} review {n}: the noodles were great"}, timeout=30)
            body = answer.json or {}
            self.answers.append((answer.status, body.get("details", {}).get("model_version"), body.get("id")))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self.rate = len(self.answers) / (time.monotonic() - self.started)


def test_whole_loop_train_promote_switch_under_load_statistics_and_rollback(local_stack: dict) -> None:
    urls, env = local_stack["urls"], local_stack["env"]
    v1 = train(urls, env, seed=1)
    promote_as_the_ui_does(urls, v1)
    wait_for_version(urls, v1, 60)
    # The page's origin gets CORS through the router, as the browser needs it.
    preflight = call(
        urls["predict"],
        method="OPTIONS",
        headers={
            "Origin": urls["frontend"],
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == urls["frontend"]
    page = call(f"{urls['frontend']}/")
    assert page.status == 200
    assert b"<title>Review sentiment</title>" in page.raw

    made: Counter = Counter()
    answered: Counter = Counter()
    for i, text in enumerate(["lovely place", "awful service, cold food", "great pizza", "never again"]):
        prediction = call(urls["predict"], {"text": text})
        assert prediction.status == 201
        made[prediction.json["details"]["model_version"]] += 1
        if i % 2 == 0:
            body = {
                "prediction_id": prediction.json["id"],
                "is_positive_user_answered": i == 0,
                "feedback_token": prediction.json["feedback_token"],
            }
            assert call(urls["feedback"], body).status == 200
            answered[prediction.json["details"]["model_version"]] += 1

    v2 = train(urls, env, seed=2)
    with Load(urls["predict"]) as load:
        time.sleep(1.0)
        promote_as_the_ui_does(urls, v2)
        took = wait_for_version(urls, v2, SERVE_WITHIN_S)
        time.sleep(1.0)

    print(f"\nv2 serving {took:.2f} s after the alias was set; {len(load.answers)} requests at {load.rate:.1f}/s")
    assert took <= SERVE_WITHIN_S
    assert Counter(status for status, _, _ in load.answers) == Counter({201: len(load.answers)})
    assert load.rate >= MIN_RATE
    assert {version for _, version, _ in load.answers} == {v1, v2}
    made.update(version for _, version, _ in load.answers)

    statistics = call(f"{urls['feedback']}/statistics").json["statistics"]
    by_version = statistics["by_model_version"]
    assert {v: by_version[v]["predictions"] for v in by_version} == dict(made)
    assert by_version[v1]["feedback"] == answered[v1] == 2
    assert by_version[v1]["correct"] == 1  # "lovely place" answered positive, "great pizza" answered negative
    assert statistics["predictions"] == sum(made.values())

    promote_as_the_ui_does(urls, v1)
    wait_for_version(urls, v1, SERVE_WITHIN_S)
    deadline = time.monotonic() + 10  # the consumer records the rollback once the switch is done
    while not any(e["kind"] == "rolled_back" and e["version"] == v1 for e in watcher_status(urls)["history"]):
        assert time.monotonic() < deadline, watcher_status(urls)["history"][:5]
        time.sleep(0.2)


def internal(local_stack: dict) -> dict:
    return json.loads((local_stack["state"] / "internal.json").read_text())


def stored_prediction(local_stack: dict, prediction_id: str) -> bool:
    """Whether the prediction is in Firestore, read through the emulator's REST API (not the code under test)."""
    host = internal(local_stack)["FIRESTORE_EMULATOR_HOST"]
    url = f"http://{host}/v1/projects/demo-local/databases/(default)/documents/predictions/{prediction_id}"
    return call(url, headers={"Authorization": "Bearer owner"}).status == 200


def test_frozen_firestore_mid_load_loses_nothing_acknowledged(local_stack: dict) -> None:
    urls, firestore_pid = local_stack["urls"], int(local_stack["pids"]["firestore"])
    with Load(urls["predict"]) as load:
        time.sleep(1.0)
        os.killpg(firestore_pid, signal.SIGSTOP)
        try:
            time.sleep(4.0)
        finally:
            os.killpg(firestore_pid, signal.SIGCONT)
        time.sleep(2.0)

    statuses = Counter(status for status, _, _ in load.answers)
    assert set(statuses) <= {201, 503}
    assert statuses[503] > 0  # the freeze was felt
    acknowledged = [pid for status, _, pid in load.answers if status == 201]
    assert [pid for pid in acknowledged if not stored_prediction(local_stack, pid)] == []


def watcher_status(urls: dict) -> dict:
    answer = call(f"{urls['registry_watcher']}/status")
    assert answer.status == 200, answer.raw
    return answer.json


def test_duplicated_pubsub_message_redeploys_nothing(local_stack: dict, monkeypatch) -> None:
    from google.cloud import pubsub_v1

    urls, hosts = local_stack["urls"], internal(local_stack)
    status = watcher_status(urls)
    target, serving = status["target"], status["serving"]
    revision = call(f"{hosts['router_admin']}/revisions").json["revision"]
    event = {
        "event_id": target["event_id"],
        "model_name": "yelp-sentiment",
        "model_version": target["version"],
        "mlflow_run_id": target["run_id"],
        "model_uri": target["model_uri"],
        "sha256": target["sha256"],
        "previous_version": None,
    }
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", hosts["PUBSUB_EMULATOR_HOST"])
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path("demo-local", hosts["topic"])
    for _ in range(2):
        publisher.publish(
            topic, json.dumps(event).encode(), model_name="yelp-sentiment", model_version=target["version"]
        ).result(timeout=10)

    consumer_logs = sorted((local_stack["state"] / "logs").glob("on_production_changed-*.log"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [line for log in consumer_logs for line in log.read_text().splitlines() if target["event_id"] in line]
        if sum("already_serving" in line for line in lines) >= 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the consumer did not acknowledge both duplicates")
    assert call(f"{hosts['router_admin']}/revisions").json["revision"] == revision
    assert watcher_status(urls)["serving"] == serving


def other_version(urls: dict, serving: str) -> str:
    from mlflow import MlflowClient

    versions = MlflowClient(urls["mlflow"]).search_model_versions("name='yelp-sentiment'")
    return next(str(v.version) for v in versions if str(v.version) != serving and v.run_id)


def test_mlflow_stopped_during_a_tick_then_started_the_loop_catches_up(local_stack: dict) -> None:
    from mlflow import MlflowClient

    urls, mlflow_pid = local_stack["urls"], int(local_stack["pids"]["mlflow"])
    client = MlflowClient(urls["mlflow"])
    (hook,) = [h for h in client.list_webhooks() if h.name == "registry-watcher-local"]
    serving = serving_version(urls)
    wanted = other_version(urls, serving)
    client.update_webhook(hook.webhook_id, status="DISABLED")  # so only ticks can notice the move
    try:
        time.sleep(1.1)  # the server's webhook cache
        promote_as_the_ui_does(urls, wanted)
        os.killpg(mlflow_pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            failed = call(urls["registry_watcher"], {}, timeout=30)
            elapsed = time.monotonic() - started
        finally:
            os.killpg(mlflow_pid, signal.SIGCONT)
        assert (failed.status, failed.error_code) == (503, "registry_unavailable")
        assert elapsed <= 5.0
        assert serving_version(urls) == serving

        caught_up = call(urls["registry_watcher"], {}, timeout=60)
        assert caught_up.status == 200
        wait_for_version(urls, wanted, SERVE_WITHIN_S)
    finally:
        client.update_webhook(hook.webhook_id, status="ACTIVE")


def test_corrupt_model_promoted_is_refused_and_the_old_version_keeps_serving(local_stack: dict) -> None:
    urls = local_stack["urls"]
    serving = serving_version(urls)
    bad = Versions(urls["mlflow"]).add_variant("yelp-sentiment", model_bytes=b"\x08\x07 not an onnx model")

    promote_as_the_ui_does(urls, bad)
    deadline = time.monotonic() + 30
    while (watcher_status(urls)["refused"] or {}).get("version") != bad:
        assert time.monotonic() < deadline, watcher_status(urls)
        time.sleep(0.2)

    refused = watcher_status(urls)["refused"]
    assert refused["reason"] == "model_invalid"
    assert serving_version(urls) == serving
    assert call(urls["predict"], {"text": "still serving"}).status == 201
