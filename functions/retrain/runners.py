"""Where a training execution runs: the Cloud Run job `train` in the cloud, a child process locally.

Both run the same entry point (`python -m training.job`) with RETRAIN_EXECUTION and AUTO_PROMOTE set by the check,
and answer `status(name)` from what outlives the check itself (Cloud Run's execution; a status file), so a tick
after a restart of the function still learns how an execution ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from retrain_decisions import Status

# Passed from the check's environment to a local execution (the training job's variables, docs in functions/README).
PASSED_THROUGH = (
    "DATA_URI",
    "RETRAIN_ARGS",
    "TRAINING_IMAGE",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "PATH",
    "HOME",
    "LANG",
)
PASSED_PREFIXES = ("MLFLOW_",)
EXECUTION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class RunnerError(RuntimeError):
    """The runner could not start an execution or say how one stands."""


class JobRunner(Protocol):
    def start(self, execution_id: str, env: Mapping[str, str]) -> str:
        """Start one execution with these variables set; its name, for status()."""
        ...

    def status(self, name: str) -> Status:
        """running, succeeded or failed."""
        ...

    def cancel(self, name: str) -> None:
        """Stop an execution the check gave up on (its timeout): a retry must not run beside it."""
        ...


class CloudRunJobRunner:
    """Executions of the Cloud Run job TRAINING_JOB (Admin API v2): run_job with container env overrides."""

    def __init__(self, job: str, *, jobs_client: Any = None, executions_client: Any = None) -> None:
        from google.cloud import run_v2

        self._run = run_v2
        self._job = job
        self._jobs = jobs_client or run_v2.JobsClient()
        self._executions = executions_client or run_v2.ExecutionsClient()

    def start(self, execution_id: str, env: Mapping[str, str]) -> str:
        from google.api_core import exceptions as gexc

        run_v2 = self._run
        override = run_v2.RunJobRequest.Overrides.ContainerOverride(
            env=[run_v2.EnvVar(name=key, value=value) for key, value in sorted(env.items())]
        )
        request = run_v2.RunJobRequest(
            name=self._job, overrides=run_v2.RunJobRequest.Overrides(container_overrides=[override])
        )
        try:
            operation = self._jobs.run_job(request=request)
            # The operation's metadata is the execution it created; the check does not wait for it to end.
            name = operation.metadata.name
        except gexc.GoogleAPIError as exc:
            raise RunnerError(f"running the Cloud Run job {self._job} failed: {exc}") from exc
        if not name:
            raise RunnerError(f"the Cloud Run job {self._job} started no execution")
        return name

    def status(self, name: str) -> Status:
        from google.api_core import exceptions as gexc

        try:
            execution = self._executions.get_execution(name=name)
        except gexc.NotFound:
            return Status.FAILED  # deleted, or never existed: it cannot end well any more
        except gexc.GoogleAPIError as exc:
            raise RunnerError(f"reading the execution {name} failed: {exc}") from exc
        return execution_status(
            execution.task_count,
            execution.succeeded_count,
            execution.failed_count,
            bool(execution.completion_time),
            execution.cancelled_count,
        )

    def cancel(self, name: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._executions.cancel_execution(name=name)  # a long-running operation: not waited for
        except gexc.NotFound:
            return  # gone already
        except (gexc.FailedPrecondition, gexc.BadRequest) as exc:  # gRPC says the one, REST the other
            if self.status(name) is Status.RUNNING:
                raise RunnerError(f"cancelling the execution {name} failed: {exc}") from exc
            # it completed meanwhile: nothing to cancel
        except gexc.GoogleAPIError as exc:
            raise RunnerError(f"cancelling the execution {name} failed: {exc}") from exc


def execution_status(tasks: int, succeeded: int, failed: int, completed: bool, cancelled: int = 0) -> Status:
    """An execution's outcome from its counts: succeeded when every task succeeded, failed once it completed
    otherwise (or a task was cancelled), running until then."""
    if failed or cancelled:
        return Status.FAILED if completed or cancelled else Status.RUNNING
    if completed:
        return Status.SUCCEEDED if succeeded >= max(tasks, 1) else Status.FAILED
    return Status.RUNNING


# Runs the command, then writes its exit status where status() finds it, even after the check restarted.
_WRAPPER = """
import json, os, subprocess, sys
status = sys.argv[1]
code = subprocess.call(sys.argv[2:])
with open(status + ".tmp", "w") as f:
    json.dump({"returncode": code}, f)
os.replace(status + ".tmp", status)
sys.exit(code)
"""


class LocalRunner:
    """A child process per execution, in its own process group (the check's own shutdown leaves it running).

    In `directory`: `<execution>.log` (its output), `<execution>.pid` and `<execution>.status` (its exit code,
    written by a small wrapper when the command ends). A process gone without a status file died: failed.
    """

    def __init__(
        self, directory: Path, cwd: Path, command: Sequence[str], environ: Mapping[str, str] | None = None
    ) -> None:
        self._directory = directory
        self._cwd = cwd
        self._command = list(command)
        self._environ = dict(os.environ if environ is None else environ)
        self._children: dict[str, subprocess.Popen] = {}

    def start(self, execution_id: str, env: Mapping[str, str]) -> str:
        if not EXECUTION_ID.fullmatch(execution_id):
            raise RunnerError(f"execution id {execution_id!r} is not well formed")
        passed = {k: v for k, v in self._environ.items() if k in PASSED_THROUGH or k.startswith(PASSED_PREFIXES)}
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            with open(self._directory / f"{execution_id}.log", "ab") as log:
                child = subprocess.Popen(
                    [sys.executable, "-c", _WRAPPER, str(self._path(execution_id, "status")), *self._command],
                    cwd=self._cwd,
                    env={**passed, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._path(execution_id, "pid").write_text(str(child.pid))
        except OSError as exc:
            raise RunnerError(f"cannot start {' '.join(self._command)} in {self._cwd}: {exc}") from exc
        self._children[execution_id] = child
        return execution_id

    def status(self, name: str) -> Status:
        if not EXECUTION_ID.fullmatch(name):
            raise RunnerError(f"execution name {name!r} is not well formed")
        child = self._children.get(name)
        # Liveness first, the status file second: the wrapper writes the file before it exits, so a process seen
        # gone with no file after it ended without one.
        # poll() reaps our own child: a zombie would still look alive to kill(pid, 0).
        alive = child.poll() is None if child is not None else self._pid(name) is not None
        status = self._path(name, "status")
        if status.exists():
            code = json.loads(status.read_text())["returncode"]
            if child is not None:  # its last act was writing the file: reap it, and forget it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)
                self._children.pop(name, None)
            return Status.SUCCEEDED if code == 0 else Status.FAILED
        if not alive:
            self._children.pop(name, None)
        return Status.RUNNING if alive else Status.FAILED

    def cancel(self, name: str) -> None:
        if not EXECUTION_ID.fullmatch(name):
            raise RunnerError(f"execution name {name!r} is not well formed")
        pid = self._pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # its whole group: the wrapper and the training under it

    def _pid(self, name: str) -> int | None:
        """The execution's process group leader while it runs; None once it is gone. A pid reused since (after a
        restart of the machine) is someone else's: its command line does not name this execution's status file."""
        try:
            pid = int(self._path(name, "pid").read_text())
        except (OSError, ValueError):
            return None  # never started here, or its files were removed
        if not _alive(pid):
            return None
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return pid  # no /proc (not Linux): liveness is all there is to go on
        # Empty while the kernel is still setting up a process it just exec'd: then it is the one just started.
        return pid if not command or str(self._path(name, "status")) in command else None

    def _path(self, execution_id: str, suffix: str) -> Path:
        return self._directory / f"{execution_id}.{suffix}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process under that pid
        return True
    return True
