"""`python -m localdev.stack`: configuration errors are clear and start nothing (the running stack: test_loop)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from training.data import REPO_ROOT


def stack(command: str, state: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localdev.stack", command],
        cwd=REPO_ROOT,
        env={**os.environ, "LOCAL_STACK_DIR": str(state), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_stack_up_on_a_taken_port_names_the_port_and_its_variable_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stack(
            "up",
            tmp_path,
            LOCAL_PORT_MLFLOW=str(port),
            LOCAL_PORT_PREDICT="0",
            LOCAL_PORT_FEEDBACK="0",
            LOCAL_PORT_REGISTRY_WATCHER="0",
            LOCAL_PORT_FRONTEND="0",
        )

    assert result.returncode == 1
    assert f"port {port} (mlflow, LOCAL_PORT_MLFLOW) already in use" in result.stderr
    assert not (tmp_path / "pids.json").exists()


def test_stack_port_setting_must_be_a_number(tmp_path: Path) -> None:
    result = stack("up", tmp_path, LOCAL_PORT_FRONTEND="eighty")

    assert result.returncode == 1
    assert "LOCAL_PORT_FRONTEND must be a port number" in result.stderr


def test_stack_url_of_a_stopped_stack_says_how_to_start_it(tmp_path: Path) -> None:
    result = stack("url", tmp_path)

    assert result.returncode == 1
    assert "make up" in result.stderr


def test_stack_reset_deletes_a_stopped_stacks_folder(tmp_path: Path) -> None:
    state = tmp_path / "local"
    for name in ("firestore/export_1", "mlflow", "gcs/bucket", "logs"):
        (state / name).mkdir(parents=True)
    (state / "secrets.json").write_text("{}")

    result = stack("reset", state)

    assert result.returncode == 0, result.stderr
    assert not state.exists()


def test_stack_reset_refuses_a_folder_that_is_not_a_stacks(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")

    result = stack("reset", tmp_path)

    assert result.returncode == 1
    assert "does not look like a local stack's folder" in result.stderr
    assert (tmp_path / "thesis.tex").exists()
