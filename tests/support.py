"""What test modules share beyond fixtures: the functions' test settings and running training as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

from sentiment_core import rollout
from sentiment_core.deployments import Rollout
from training.data import REPO_ROOT

# The functions' test settings (tests/functions, tests/frontend).
PROJECT = "demo-functions-test"
SECRET = "test-secret-0123456789abcdef"
ORIGIN = "https://reviews.example"
STORE_TIMEOUT_S = 2.0


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
