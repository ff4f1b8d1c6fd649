"""What test modules share beyond fixtures: the functions' test settings and running training as a user does."""

from __future__ import annotations

import os
import subprocess
import sys

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
