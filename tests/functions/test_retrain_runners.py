"""The job runners: CloudRunJobRunner through the real google-cloud-run client (REST) against a local stand-in of
the Admin API, and LocalRunner with stand-in commands that succeed, fail or sleep."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials

from tests.functions.conftest import retrain_module
from tests.functions.fake_cloud_run_jobs import FakeCloudRunJobs

pytestmark = pytest.mark.system  # servers and child processes
runners = retrain_module("runners")
Status = retrain_module("retrain_decisions").Status

JOB = "projects/p/locations/europe-west1/jobs/train"


@pytest.fixture
def jobs() -> Iterator[FakeCloudRunJobs]:
    with FakeCloudRunJobs(JOB) as fake:
        yield fake


@pytest.fixture
def cloud_runner(jobs):
    from google.cloud import run_v2

    options = {"credentials": AnonymousCredentials(), "transport": "rest"}
    options["client_options"] = {"api_endpoint": jobs.url}
    return runners.CloudRunJobRunner(
        JOB, jobs_client=run_v2.JobsClient(**options), executions_client=run_v2.ExecutionsClient(**options)
    )


def test_cloud_run_runner_start_runs_the_job_with_the_execution_and_auto_promote_as_env(cloud_runner, jobs) -> None:
    name = cloud_runner.start("m-1", {"RETRAIN_EXECUTION": "m-1", "AUTO_PROMOTE": "canary"})

    assert name == f"{JOB}/executions/train-00001"
    assert jobs.env(name) == {"RETRAIN_EXECUTION": "m-1", "AUTO_PROMOTE": "canary"}
    assert len(jobs.runs) == 1


@pytest.mark.parametrize(("succeeded", "expected"), [(True, Status.SUCCEEDED), (False, Status.FAILED)])
def test_cloud_run_runner_status_is_running_until_the_execution_completes(
    cloud_runner, jobs, succeeded: bool, expected
) -> None:
    name = cloud_runner.start("m-1", {})

    before = cloud_runner.status(name)
    jobs.finish(name, succeeded=succeeded)

    assert (before, cloud_runner.status(name)) == (Status.RUNNING, expected)


def test_cloud_run_runner_cancel_stops_a_running_execution_and_ignores_a_completed_one(cloud_runner, jobs) -> None:
    running, done = cloud_runner.start("m-1", {}), cloud_runner.start("m-2", {})
    jobs.finish(done, succeeded=True)

    cloud_runner.cancel(running)
    cloud_runner.cancel(done)

    assert (cloud_runner.status(running), cloud_runner.status(done)) == (Status.FAILED, Status.SUCCEEDED)
    cancels = [urllib.parse.urlsplit(path).path for method, path, _ in jobs.requests if method == "POST"]
    assert [path for path in cancels if path.endswith(":cancel")] == [
        f"/v2/{running}:cancel",
        f"/v2/{done}:cancel",
    ]


def test_cloud_run_runner_refused_run_raises_runner_error(cloud_runner, jobs) -> None:
    jobs.refuse_next_run = True

    with pytest.raises(runners.RunnerError, match="cannot be pulled"):
        cloud_runner.start("m-1", {})


def test_cloud_run_runner_unknown_execution_is_failed(cloud_runner) -> None:
    assert cloud_runner.status(f"{JOB}/executions/train-99999") is Status.FAILED


@pytest.mark.parametrize(
    ("tasks", "succeeded", "failed", "completed", "cancelled", "expected"),
    [
        (1, 0, 0, False, 0, Status.RUNNING),
        (1, 1, 0, True, 0, Status.SUCCEEDED),
        (1, 0, 1, True, 0, Status.FAILED),
        (2, 1, 1, False, 0, Status.RUNNING),  # a task failed, another may still retry
        (1, 0, 0, False, 1, Status.FAILED),
        (2, 1, 0, True, 0, Status.FAILED),  # completed without all its tasks
    ],
)
def test_execution_status_from_counts(tasks, succeeded, failed, completed, cancelled, expected) -> None:
    assert runners.execution_status(tasks, succeeded, failed, completed, cancelled) is expected


def local(tmp_path: Path, code: str, environ: dict[str, str] | None = None):
    """A LocalRunner whose 'training' is a line of Python."""
    return runners.LocalRunner(tmp_path / "runs", tmp_path, [sys.executable, "-c", code], environ or {})


def wait_until_done(runner, name: str, timeout_s: float = 30) -> object:
    deadline = time.monotonic() + timeout_s
    while (status := runner.status(name)) is Status.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def test_local_runner_records_success_with_its_log_and_the_env_passed_through(tmp_path: Path) -> None:
    code = "import os; print(os.environ['RETRAIN_EXECUTION'], os.environ['DATA_URI'], os.environ.get('SECRET'))"
    environ = {"DATA_URI": "gs://data/p/", "SECRET": "not passed", "MLFLOW_TRACKING_URI": "http://m", "PATH": "/bin"}
    runner = local(tmp_path, code, environ)

    name = runner.start("m-1", {"RETRAIN_EXECUTION": "m-1", "AUTO_PROMOTE": "never"})

    assert wait_until_done(runner, name) is Status.SUCCEEDED
    assert (tmp_path / "runs" / "m-1.log").read_text().strip() == "m-1 gs://data/p/ None"


def test_local_runner_records_a_nonzero_exit_as_failed(tmp_path: Path) -> None:
    runner = local(tmp_path, "raise SystemExit(3)")

    assert wait_until_done(runner, runner.start("m-1", {})) is Status.FAILED


def test_local_runner_status_survives_a_restart_of_the_check(tmp_path: Path) -> None:
    first = local(tmp_path, "pass")
    name = first.start("m-1", {})
    wait_until_done(first, name)

    restarted = local(tmp_path, "pass")  # a new instance: no child handle, only the files

    assert restarted.status(name) is Status.SUCCEEDED


def test_local_runner_sleeping_command_is_running_in_its_own_process_group(tmp_path: Path) -> None:
    runner = local(tmp_path, "import time; time.sleep(60)")
    name = runner.start("m-1", {})
    pid = int((tmp_path / "runs" / "m-1.pid").read_text())
    try:
        assert runner.status(name) is Status.RUNNING
        assert os.getpgid(pid) == pid != os.getpgid(0)
        assert local(tmp_path, "pass").status(name) is Status.RUNNING  # seen alive from a restarted check too
    finally:
        os.killpg(pid, signal.SIGKILL)
    assert wait_until_done(runner, name) is Status.FAILED  # killed: no status written


def test_local_runner_cancel_stops_the_whole_process_group_even_from_a_restarted_check(tmp_path: Path) -> None:
    grandchild = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    runner = local(tmp_path, f"import subprocess, sys, time; subprocess.Popen({grandchild}); time.sleep(60)")
    name = runner.start("m-1", {})
    pid = int((tmp_path / "runs" / "m-1.pid").read_text())
    time.sleep(0.5)  # the grandchild is started

    local(tmp_path, "pass").cancel(name)

    assert wait_until_done(runner, name) is Status.FAILED
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
        raise AssertionError("a process of the cancelled execution's group is still alive")


def test_local_runner_does_not_take_a_reused_pid_for_its_execution(tmp_path: Path) -> None:
    runner = local(tmp_path, "pass")
    name = runner.start("m-1", {})
    wait_until_done(runner, name)
    (tmp_path / "runs" / "m-1.status").unlink()  # as if it died without one...
    (tmp_path / "runs" / "m-1.pid").write_text(str(os.getpid()))  # ...and its pid now names this test's process

    restarted = local(tmp_path, "pass")
    restarted.cancel(name)  # must not signal this process

    assert restarted.status(name) is Status.FAILED


def test_local_runner_dead_process_without_status_is_failed_after_a_restart(tmp_path: Path) -> None:
    runner = local(tmp_path, "import time; time.sleep(60)")
    name = runner.start("m-1", {})
    pid = int((tmp_path / "runs" / "m-1.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    wait_until_done(runner, name)  # reaps the child

    assert local(tmp_path, "pass").status(name) is Status.FAILED


def test_local_runner_unknown_execution_is_failed_and_bad_names_refused(tmp_path: Path) -> None:
    runner = local(tmp_path, "pass")

    assert runner.status("never-started") is Status.FAILED
    with pytest.raises(runners.RunnerError):
        runner.status("../etc/passwd")
    with pytest.raises(runners.RunnerError):
        runner.start("../x", {})
