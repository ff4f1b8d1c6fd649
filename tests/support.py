"""What test modules share beyond fixtures: the functions' test settings and running training as a user does."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sentiment_core import rollout
from sentiment_core.contract import MODEL_NAME
from sentiment_core.deployments import Rollout
from sentiment_core.firestore_rest import RestPredictionWriter
from sentiment_core.records import Prediction
from training.data import REPO_ROOT

# The functions' test settings (tests/functions, tests/frontend).
PROJECT = "demo-functions-test"
SECRET = "test-secret-0123456789abcdef"
ORIGIN = "https://reviews.example"
STORE_TIMEOUT_S = 2.0


def run_training(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600, module: str = "training.train"
) -> subprocess.CompletedProcess:
    """`python -m training.train --quiet ARGS` (or another module of training) in a child process, exactly as a
    user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, "--quiet", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def baking_rollout(started_at: datetime) -> Rollout:
    """Version 2 at 10% beside version 1 (the default steps), recorded five minutes in with the policy's first
    decision: a hold while it bakes, with both versions' counts behind its checks."""
    settings = rollout.RolloutSettings()
    started = rollout.start("1", "2", started_at)
    evidence = rollout.RolloutEvidence(
        rollout.VersionCounts("1", predictions=900, positive=450, feedback=180, correct=171),
        rollout.VersionCounts("2", predictions=100, positive=52, feedback=20, correct=19),
        ready=True,
    )
    later = started_at + timedelta(minutes=5)
    decision = rollout.decide(started, evidence, settings, later)
    return Rollout.of(started, started.percent(settings)).decided(decision, later)


# --- Monitoring: predictions as predict stores them, and the reference they are compared with ---------------


def review_answers(count: int, seed: int) -> list[tuple[float, str]]:
    """(probability, text) pairs shaped like a sentiment model's answers on reviews: mostly confident, about
    half positive, texts of a few words to a few sentences."""
    rng = random.Random(seed)
    answers = []
    for _ in range(count):
        positive = rng.random() < 0.5
        probability = rng.betavariate(8, 2) if positive else rng.betavariate(2, 8)
        answers.append((probability, " ".join(["good food"] * rng.randint(1, 60))))
    return answers


def monitored_prediction(
    version: str,
    probability: float,
    created_at: datetime,
    text: str = "food",
    user_answer: bool | None = None,
    known_fraction: float | None = None,
) -> Prediction:
    """A record as predict makes it (threshold 0.5), with the user's answer and the known fraction if given."""
    return Prediction(
        id=uuid.uuid4().hex,
        text=text,
        probability=probability,
        model_answer=probability >= 0.5,
        user_answer=user_answer,
        model_name=MODEL_NAME,
        model_version=version,
        mlflow_run_id="run",
        inference_elapsed=0.001,
        created_at=created_at,
        known_fraction=known_fraction,
    )


def save_predictions(firestore_host: str, predictions: Sequence[Prediction]) -> None:
    """Stored through predict's writer, records and counters in the same commits, 100 records a commit."""
    writer = RestPredictionWriter(
        PROJECT, "(default)", 10.0, endpoint=f"http://{firestore_host}", token=lambda: "owner"
    )
    try:
        for start in range(0, len(predictions), 100):
            writer.save_predictions(predictions[start : start + 100])
    finally:
        writer.close()


class ScriptedServer:
    """A loopback HTTP server answering GETs and POSTs from a script of (status, body, delay) and counting requests."""

    def __init__(self, script: list[tuple[int, bytes, float]]) -> None:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = 0
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.bodies: list[bytes] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                status, body, delay = script[min(scripted.requests, len(script) - 1)]
                scripted.requests += 1
                scripted.headers.append(dict(self.headers))
                scripted.paths.append(self.path)
                scripted.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
