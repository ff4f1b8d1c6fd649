"""Start real servers in their own process groups, wait until they answer, stop the whole group."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """A service did not come up."""


@dataclasses.dataclass(frozen=True)
class Service:
    """A running server: its URL and the process group to stop."""

    name: str
    url: str
    pid: int
    log_path: Path
    # Kept so the Popen object lives as long as the server; None for a server another process started.
    process: subprocess.Popen | None = dataclasses.field(default=None, compare=False, repr=False)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server's whole process group and reap it."""
        stop(self.pid)
        if self.process is not None:
            self.process.wait(timeout=5)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that is free now and not handed out before by this process.

    A port is chosen before its server binds it: the stack chooses its public ports first, then starts the
    emulators on ports of their own, and the kernel may offer a chosen port again until its server has bound it.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def start(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    ready_path: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    ready_url: str | None = None,
    ready_any_status: bool = False,
) -> Service:
    """Launch argv in a new session (so its children share its group) and poll url+ready_path until 200.

    ready_any_status: any HTTP answer means ready (a CloudEvent function answers GET with an error).
    """
    ready_url = ready_url or url + ready_path
    service = launch(name, argv, url=url, log_path=log_path, env=env)
    process = service.process
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceError(f"{name} exited with {process.returncode}:\n{tail(log_path)}")
            if _answers(ready_url, ready_any_status):
                return service
            time.sleep(0.2)
        raise ServiceError(f"{name} did not answer {ready_url} within {timeout_s:.0f} s:\n{tail(log_path)}")
    except BaseException:  # not ready, or interrupted while waiting (Ctrl-C): nobody else will stop it
        service.stop()  # its whole group: children an exited wrapper may have left behind too
        raise


def launch(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> Service:
    """Start argv in a new session (its children share its group), output appended to log_path; no waiting."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Service(name=name, url=url, pid=process.pid, log_path=log_path, process=process)


def stop(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left (emulator wrappers leave Java children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def alive(pgid: int) -> bool:
    """Whether any process of the group led by pgid is still running."""
    if pgid <= 0:
        return False  # killpg(0) would signal our own group
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child so it does not linger as a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str, any_status: bool = False) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return any_status
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_mlflow(
    workdir: Path,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    artifacts_destination: str | None = None,
) -> Service:
    """MLflow tracking server with its UI: SQLite backend, proxied artifacts (a local folder, or gs://bucket
    with STORAGE_EMULATOR_HOST in env, as in production).

    One worker and no job runner: 6 s and ~0.5 GiB instead of 13 s and ~2 GiB over 15 processes (MLflow 3.17).
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination or str(workdir / "artifacts"),
    ]
    server_env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # The server caches the webhook list per event for 60 s: a webhook registered after an alias move
        # would miss the next minute of moves.
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        **(env or {}),
    }
    return start(
        "mlflow",
        argv,
        url=f"http://127.0.0.1:{port}",
        ready_path="/health",
        log_path=workdir / "mlflow.log",
        env=server_env,
        timeout_s=120,
    )


def start_gcs_emulator(workdir: Path, port: int | None = None, data_dir: Path | None = None) -> Service:
    """gcp-storage-emulator: google-cloud-storage talks to it via STORAGE_EMULATOR_HOST.

    In memory by default; with data_dir, objects are kept on disk there and survive a restart.
    """
    port = port or free_port()
    argv = [str(VENV_BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port)]
    env = {}
    if data_dir is None:
        argv.append("--in-memory")
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        env["STORAGE_BASE"] = str(data_dir)
    return start(
        "gcs",
        argv,
        url=f"http://127.0.0.1:{port}",
        ready_path="/storage/v1/b",
        log_path=workdir / "gcs.log",
        env=env,
        timeout_s=30,
    )


def start_firestore_emulator(workdir: Path, port: int | None = None, import_from: Path | None = None) -> Service:
    """The official Firestore emulator (Java); with import_from, it starts with the data of that export."""
    port = port or free_port()
    command = ["emulators", "firestore", "start", "--quiet"]
    metadata = firestore_export_metadata(import_from) if import_from else None
    if metadata is not None:
        command.append(f"--import-data={metadata}")
    return _start_gcloud_emulator("firestore", command, workdir, port)


def firestore_export_metadata(folder: Path) -> Path | None:
    """The metadata file that names an export (what --import-data takes), or None if folder holds no export."""
    found = sorted(folder.glob("*/*.overall_export_metadata"))
    return found[-1] if found else None


def export_firestore(emulator_url: str, project: str, destination: Path, timeout_s: float = 60.0) -> Path:
    """Every document of the emulator's default database, written to destination (replaced only on success).

    The emulator's own --export-on-exit is not used: stopped by a signal with its process group, it logs
    "Failed during export" and writes nothing. Its export endpoint writes a complete snapshot on request.
    """
    staging = destination.with_name(destination.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    body = json.dumps({"database": f"projects/{project}/databases/(default)", "export_directory": str(staging)})
    request = urllib.request.Request(
        f"http://{emulator_url}/emulator/v1/projects/{project}:export",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ServiceError(f"the Firestore emulator at {emulator_url} did not export its data: {exc}") from exc
    if firestore_export_metadata(staging) is None:
        shutil.rmtree(staging, ignore_errors=True)
        raise ServiceError(f"the Firestore emulator's export in {staging} has no metadata file")
    previous = destination.with_name(destination.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if destination.exists():
        destination.rename(previous)
    staging.rename(destination)  # a crash in between leaves .old, still a complete export
    shutil.rmtree(previous, ignore_errors=True)
    return destination


def start_pubsub_emulator(workdir: Path, project: str, port: int | None = None) -> Service:
    """The official Pub/Sub emulator (Java)."""
    port = port or free_port()
    command = ["beta", "emulators", "pubsub", "start", f"--project={project}"]
    return _start_gcloud_emulator("pubsub", command, workdir, port)


def _start_gcloud_emulator(name: str, command: list[str], workdir: Path, port: int) -> Service:
    """A gcloud emulator in its own process group: stopping the gcloud wrapper alone leaves its Java child."""
    return start(
        name,
        ["gcloud", *command, f"--host-port=127.0.0.1:{port}"],
        url=f"127.0.0.1:{port}",
        ready_path="",
        log_path=workdir / f"{name}.log",
        timeout_s=60,
        ready_url=f"http://127.0.0.1:{port}/",
    )


FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "functions"


def start_router(
    workdir: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    admin_port: int | None = None,
    model_uri: str | None = None,
    model_version: str | None = None,
    model_sha256: str | None = None,
) -> tuple[Service, str]:
    """localdev.router on loopback: (the service, whose url is predict's stable URL; the revision API's URL)."""
    port = port or free_port()
    admin_port = admin_port or free_port()
    argv = [sys.executable, "-m", "localdev.router", "--port", str(port), "--admin-port", str(admin_port)]
    argv += ["--workdir", str(workdir)]
    if model_uri:
        argv += ["--model-uri", model_uri, "--model-version", model_version or ""]
        if model_sha256:
            argv += ["--model-sha256", model_sha256]
    admin_url = f"http://127.0.0.1:{admin_port}"
    repo = Path(__file__).resolve().parents[1]
    service = start(
        "router",
        argv,
        url=f"http://127.0.0.1:{port}",
        ready_path="",
        ready_url=f"{admin_url}/healthz",
        log_path=workdir / "router.log",
        # This checkout's shared package before any installed copy: the revisions it starts import it too.
        env={**env, "PYTHONPATH": os.pathsep.join(str(repo / part) for part in ("", "lib/sentiment_core/src"))},
        timeout_s=90,
    )
    return service, admin_url


def start_function(
    name: str,
    workdir: Path,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    ready_path: str = "/healthz",
    source_dir: Path | None = None,
    target: str | None = None,
    ready_any_status: bool = False,
) -> Service:
    """A function under functions-framework (gunicorn, as in the cloud) on loopback."""
    port = port or free_port()
    source = (source_dir or FUNCTIONS_DIR / name) / "main.py"
    argv = [
        str(VENV_BIN / "functions-framework"),
        "--source",
        str(source),
        "--target",
        target or name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start(
        target or name,  # one source may serve several entry points: each is its own service
        argv,
        url=f"http://127.0.0.1:{port}",
        ready_path=ready_path,
        log_path=workdir / f"{target or name}-{port}.log",
        env=env,
        timeout_s=60,
        ready_any_status=ready_any_status,
    )


@contextlib.contextmanager
def frozen(pid: int, timeout_s: float = 10.0) -> Iterator[None]:
    """The process group led by pid stopped (SIGSTOP: hung, not gone, data kept) until the block ends.

    Returns only once every process of the group is stopped: a signal reaches each thread asynchronously.
    """
    os.killpg(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout_s
        while not all(_state(member) in ("T", "t", None) for member in _group(pid)):
            if time.monotonic() > deadline:
                raise ServiceError(f"process group {pid} did not stop within {timeout_s:g} s")
            time.sleep(0.01)
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)


def _group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
    return members


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (T: stopped), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
