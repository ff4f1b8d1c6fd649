import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from localdev import services
from training.data import REPO_ROOT


def stack(command: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localdev.stack", command],
        cwd=REPO_ROOT,
        env={**os.environ, "LOCAL_STACK_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_stack_up_writes_urls_that_answer_and_down_stops_every_process(tmp_path: Path) -> None:
    try:
        up = stack("up", tmp_path)
        assert up.returncode == 0, up.stderr
        urls = json.loads((tmp_path / "stack.json").read_text())
        pids = json.loads((tmp_path / "pids.json").read_text())
        with urllib.request.urlopen(urls["mlflow"] + "/health", timeout=5) as response:
            assert response.status == 200
        assert stack("up", tmp_path).returncode == 0  # idempotent: nothing new started
        assert json.loads((tmp_path / "pids.json").read_text()) == pids
    finally:
        down = stack("down", tmp_path)

    assert down.returncode == 0
    assert not any(services.alive(pid) for pid in pids.values())
    assert not (tmp_path / "stack.json").exists()
