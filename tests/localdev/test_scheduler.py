"""The local scheduler's log line: the watcher's answer in words, "no production version" rather than "None"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from localdev.scheduler import describe, describe_retrain, tick
from training.data import REPO_ROOT

NOTHING = {
    "action": "no_production_version",
    "desired_version": None,
    "target_version": None,
    "serving_version": None,
    "detail": "no version of yelp-sentiment has alias production or stage Production; no version is in service",
    "event_id": None,
}


@pytest.mark.parametrize(
    ("status", "answer", "line"),
    [
        (200, NOTHING, f"200 no_production_version: no production version, nothing serving ({NOTHING['detail']})"),
        (
            200,
            {**NOTHING, "action": "up_to_date", "desired_version": "3", "serving_version": "3", "detail": ""},
            "200 up_to_date: production version 3, serving version 3",
        ),
        (
            200,
            {**NOTHING, "action": "published", "desired_version": "4", "serving_version": "3", "detail": ""},
            "200 published: production version 4, serving version 3",
        ),
        (
            503,
            {"error": {"code": "registry_unavailable", "message": "MLflow did not answer"}},
            "503 registry_unavailable: MLflow did not answer",
        ),
        (502, "<html>Bad Gateway</html>", "502 <html>Bad Gateway</html>"),
    ],
    ids=["nothing-promoted", "up-to-date", "published", "error", "not-json"],
)
def test_scheduler_describe_says_what_the_tick_did_in_words(status: int, answer, line: str) -> None:
    body = answer if isinstance(answer, str) else json.dumps(answer)

    assert describe(status, body) == line


@pytest.fixture
def watcher_answering_nothing_promoted() -> Iterator[str]:
    """A real HTTP server answering a tick as the watcher does when no version was ever promoted."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps(NOTHING).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scheduler_tick_with_nothing_promoted_logs_no_production_version_not_none(
    watcher_answering_nothing_promoted: str,
) -> None:
    line = tick(watcher_answering_nothing_promoted, timeout_s=5)

    assert line.startswith("200 no_production_version: no production version, nothing serving")
    assert "None" not in line


@pytest.mark.parametrize(
    ("status", "answer", "line"),
    [
        (200, {"action": "up_to_date", "detail": ""}, "200 up_to_date"),
        (
            200,
            {"action": "started", "detail": "execution r-1 on new data"},
            "200 started: execution r-1 on new data",
        ),
        (503, {"error": {"code": "mlflow_unavailable", "message": "no answer"}}, "503 mlflow_unavailable: no answer"),
        (502, "<html>Bad Gateway</html>", "502 <html>Bad Gateway</html>"),
    ],
    ids=["up-to-date", "started", "error", "not-json"],
)
def test_scheduler_describe_retrain_says_what_the_check_did(status: int, answer, line: str) -> None:
    body = answer if isinstance(answer, str) else json.dumps(answer)

    assert describe_retrain(status, body) == line


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[tuple[float, str]]]]:
    """Answers every POST like a watcher with nothing promoted and records (monotonic time, path) of each."""
    calls: list[tuple[float, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append((time.monotonic(), self.path))
            body = json.dumps(NOTHING).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run_scheduler(argv: list[str], seconds: float) -> str:
    process = subprocess.Popen(
        [sys.executable, "-m", "localdev.scheduler", *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    return out


def test_scheduler_ticks_the_retrain_check_on_its_own_interval_and_not_at_start(recording_server) -> None:
    url, calls = recording_server
    started = time.monotonic()

    out = _run_scheduler(
        ["--url", f"{url}/watcher", "--interval", "0.5", "--retrain-url", f"{url}/retrain", "--retrain-interval", "2"],
        seconds=5.0,
    )

    retrain = [at - started for at, path in calls if path == "/retrain"]
    watcher = [at for at, path in calls if path == "/watcher"]
    assert len(watcher) >= 5, out
    assert 2 <= len(retrain) <= 3, out
    assert retrain[0] >= 1.5, f"the first retrain tick came {retrain[0]:.2f} s after start"
    assert "retrain: 200 no_production_version" in out


def test_scheduler_with_retrain_interval_zero_never_ticks_the_check(recording_server) -> None:
    url, calls = recording_server

    _run_scheduler(
        ["--url", f"{url}/watcher", "--interval", "0.5", "--retrain-url", f"{url}/retrain", "--retrain-interval", "0"],
        seconds=2.0,
    )

    assert [path for _, path in calls if path == "/retrain"] == []
    assert any(path == "/watcher" for _, path in calls)
