"""Session fixtures: real servers (MLflow, emulators) and trained models; the test tiers.

Tiers (markers, set here from the fixtures a test uses; a module may set its own): `unit` needs no server,
`system` starts emulators or servers, `e2e` runs the whole local stack. `make test-fast` runs the unit tier.

Two models: `trained`, small and quick (seconds), for everything that serves, gates or deploys a model; and
`trained_full`, the default training run, only for the tests of training itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from localdev import services
from tests.support import ORIGIN, PROJECT, SECRET, STORE_TIMEOUT_S
from training.data import DEFAULT_DATA_DIR, REPO_ROOT

# Test modules import what they share from tests/support.py, never from here: a conftest imported by name is a
# second copy of this module, with a second set of background servers and trainings.


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_firestore_emulator(tmp_path_factory.mktemp("firestore")) as service:
        yield service


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_pubsub_emulator(tmp_path_factory.mktemp("pubsub"), PROJECT) as service:
        yield service


@pytest.fixture(scope="session")
def function_env(firestore_emulator: services.Service, trained: dict) -> dict[str, str]:
    return {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FEEDBACK_TOKEN_SECRET": SECRET,
        "ALLOWED_ORIGINS": f"{ORIGIN},http://localhost:8000",
        "FIRESTORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
        "MODEL_URI": f"file://{trained['staged_dir']}",
    }


@pytest.fixture(scope="session")
def db(firestore_emulator: services.Service) -> firestore.Client:
    """A client of the emulator for the tests' own reads (not the code under test)."""
    import os

    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_emulator.url
    try:
        return firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    finally:
        del os.environ["FIRESTORE_EMULATOR_HOST"]


@pytest.fixture
def clean_db(firestore_emulator: services.Service, db: firestore.Client) -> firestore.Client:
    """Every document deleted, through the emulator's reset endpoint."""
    url = f"http://{firestore_emulator.url}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()
    return db


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """Tests may set variables; none leaks into the next test."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def default_data_dir() -> Path:
    if not DEFAULT_DATA_DIR.is_dir():
        pytest.fail(f"the review data is expected at {DEFAULT_DATA_DIR} (../shared/data/yelp beside the repository)")
    return DEFAULT_DATA_DIR


@pytest.fixture(scope="session")
def mlflow_server() -> services.Service:
    """A real MLflow tracking server (SQLite backend, proxied local artifacts) for the whole session."""
    return EARLY["mlflow_server"].result()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Service]:
    with services.start_gcs_emulator(tmp_path_factory.mktemp("gcs")) as service:
        yield service


# Enough data for a model the deploy gate accepts (validation accuracy about 0.91), in about 20 s.
QUICK_RUN = ["--limit", "20000", "--epochs", "2"]


class Cancelled(RuntimeError):
    """The session ended before the work did."""


class Resources:
    """What background work opened (servers, folders, child processes), closed once at session end.

    The work adds to it from its own thread while the session may close it at any moment: whatever is added
    after the close is closed at once and the work is cancelled, so nothing outlives the session.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._closed = False

    def enter(self, context: contextlib.AbstractContextManager) -> Any:
        value = context.__enter__()  # outside the lock: starting a server takes seconds
        with self._lock:
            if not self._closed:
                self._stack.push(context)
                return value
        context.__exit__(None, None, None)
        raise Cancelled

    def callback(self, cleanup: Callable[[], object]) -> None:
        with self._lock:
            if not self._closed:
                self._stack.callback(cleanup)
                return
        cleanup()
        raise Cancelled

    def check(self) -> None:
        if self._closed:
            raise Cancelled

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._stack.close()


class Early:
    """What a session fixture needs, started in a thread as soon as collection shows a test will use it.

    The slow parts of the session (MLflow servers, the training runs) then overlap the tests that come first
    instead of stalling the first test that needs them.
    """

    def __init__(self, work: Callable[[Resources], Any]) -> None:
        self._work = work
        self._resources = Resources()
        self._future: concurrent.futures.Future | None = None
        self._lock = threading.Lock()  # started from the session's thread and from other work's threads

    def start(self) -> None:
        with self._lock:
            if self._future is None:
                self._future = concurrent.futures.ThreadPoolExecutor(1).submit(self._work, self._resources)

    def result(self) -> Any:
        self.start()
        return self._future.result()

    def settled(self) -> None:
        """Wait until the work, if started, has ended (either way)."""
        if self._future is not None:
            concurrent.futures.wait([self._future])

    def cancel(self) -> None:
        """Stop the servers and kill the child processes the work opened; the work then ends soon."""
        self._resources.close()


def _train_registered(resources: Resources, tracking_uri: str, extra: list[str]) -> dict:
    """`python -m training.train` registering, promoting and staging a model; its summary."""
    staged = Path(resources.enter(tempfile.TemporaryDirectory(prefix="staged-"))) / "model"
    argv = ["--quiet", "--tracking-uri", tracking_uri, "--register", "--promote", "--output-dir", str(staged), *extra]
    process = subprocess.Popen(
        [sys.executable, "-m", "training.train", *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    resources.callback(lambda: process.poll() is None and process.kill())
    stdout, stderr = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"training failed with exit code {process.returncode}:\n{stderr[-4000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {**summary, "staged_dir": staged, "stderr": stderr, "tracking_uri": tracking_uri}


def _server(resources: Resources, prefix: str) -> services.Service:
    workdir = Path(resources.enter(tempfile.TemporaryDirectory(prefix=prefix)))
    return resources.enter(services.start_mlflow(workdir))


def _full_run(resources: Resources) -> dict:
    server = _server(resources, "mlflow-full-")
    # Two trainings at once on two cores would delay the quick model, which the first tests wait for.
    EARLY["trained"].settled()
    resources.check()
    return _train_registered(resources, server.url, [])


EARLY: dict[str, Early] = {"mlflow_server": Early(lambda resources: _server(resources, "mlflow-"))}
EARLY["trained"] = Early(lambda resources: _train_registered(resources, mlflow_server_url(), QUICK_RUN))
EARLY["trained_full"] = Early(_full_run)


def mlflow_server_url() -> str:
    return EARLY["mlflow_server"].result().url


@pytest.fixture(scope="session")
def trained(default_data_dir: Path, mlflow_server: services.Service) -> dict:
    """A quick model in the session's MLflow server: registered, promoted (alias production) and staged."""
    return _early_result("trained")


@pytest.fixture(scope="session")
def trained_full(default_data_dir: Path) -> dict:
    """The default training run, as a user runs it, in an MLflow server of its own: registered, promoted, staged."""
    return _early_result("trained_full")


def _early_result(name: str) -> Any:
    try:
        return EARLY[name].result()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start now what the selected tests will need: the session's first test does not wait for all of it."""
    needed = set().union(*(item.fixturenames for item in session.items)) if session.items else set()
    for name in ("trained", "trained_full", "mlflow_server"):  # the quick model first: the first tests use it
        if name in needed:
            EARLY[name].start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for early in EARLY.values():  # all cancelled first: one work may be waiting on another
        early.cancel()
    for early in EARLY.values():
        early.settled()


SERVER_FIXTURES = frozenset(
    {
        "firestore_emulator",
        "pubsub_emulator",
        "gcs_emulator",
        "mlflow_server",
        "trained",
        "trained_full",
        "function_env",
        "db",
    }
)
TIERS = ("unit", "system", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets one tier: its own marker, else e2e on the whole stack, system if it uses a server."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        if "local_stack" in item.fixturenames:
            item.add_marker(pytest.mark.e2e)
        elif SERVER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.system)
        else:
            item.add_marker(pytest.mark.unit)
