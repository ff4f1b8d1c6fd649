"""The local stack as the end-to-end tests run it: started in a temporary folder, trained, promoted, loaded.

Shared by the modules of tests/localdev that each run a stack of their own (test_loop: immediate switches;
test_rollout_loop: progressive rollouts).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from localdev import services
from tests.functions.conftest import call
from training.data import REPO_ROOT


@contextlib.contextmanager
def running_stack(state: Path, settings: dict[str, str] | None = None) -> Iterator[dict]:
    """`localdev.stack up` in `state` with free ports and `settings` in its environment; `down` after, and no
    process of it left."""
    env = {
        "LOCAL_STACK_DIR": str(state),
        "LOCAL_MIN_VALIDATION_ACCURACY": "0.6",
        # The loop's tests train quick models (20,000 examples, 2 epochs: about 84% of the behavioural suite).
        "MIN_BEHAVIOUR_PASS_RATE": "0.7",
        # The loops' own trainings are not from the data bucket: the retrain check would train again on its
        # tick. Only test_retrain_loop ticks it.
        "LOCAL_RETRAIN_INTERVAL_S": "0",
        **{f"LOCAL_PORT_{name}": "0" for name in ("MLFLOW", "PREDICT", "FEEDBACK", "REGISTRY_WATCHER", "FRONTEND")},
        **(settings or {}),
    }
    up = stack_command("up", env)
    pids = json.loads((state / "pids.json").read_text()) if (state / "pids.json").exists() else {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        urls = json.loads((state / "stack.json").read_text())
        fresh_predict = call(f"{urls['predict']}/healthz").error_code  # before anything is promoted
        yield {"urls": urls, "pids": pids, "state": state, "env": env, "fresh_predict": fresh_predict}
        pids = local_stack_pids(state)  # `up` again (test_down_then_up...) starts new processes
    finally:
        revisions = state / "logs" / "predict" / "revisions.json"
        revision_pids = json.loads(revisions.read_text()).values() if revisions.exists() else []
        down = stack_command("down", env)
        assert down.returncode == 0, down.stderr
        left = [pid for pid in [*pids.values(), *revision_pids] if services.alive(int(pid))]
        assert left == [], f"processes left after down: {[_command(pid) for pid in left]}"


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


def local_stack_pids(state: Path) -> dict:
    path = state / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return str(pid)


def train(urls: dict, env: dict, seed: int, limit: int = 20000, epochs: int = 2) -> str:
    """A quick model registered as a new version; its version number."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--quiet",
            "--limit",
            str(limit),
            "--epochs",
            str(epochs),
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


def watcher_status(urls: dict) -> dict:
    answer = call(f"{urls['registry_watcher']}/status")
    assert answer.status == 200, answer.raw
    return answer.json
