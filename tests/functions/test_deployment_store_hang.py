"""The deployment document's writes and history with Firestore hung (SIGSTOP): StateUnavailable within the
store's bound, never the client library's default retry of minutes (a tick or /status would hang with it)."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from localdev import services
from sentiment_core.deployment_store import DeploymentStore, StateUnavailable
from sentiment_core.deployments import Desired
from tests.functions.conftest import STORE_TIMEOUT_S

HANG_S = 30.0  # a deadline for "it does not hang", not a figure


@pytest.mark.parametrize("operation", ["commit", "history"])
def test_write_or_history_with_firestore_hung_is_state_unavailable_not_a_hang(
    firestore_emulator, clean_db, operation: str
) -> None:
    store = DeploymentStore(clean_db, "hang-test", timeout_s=STORE_TIMEOUT_S)
    snapshot = store.read()
    new = dataclasses.replace(snapshot.state, desired=Desired("1", "run", "alias"))
    calls = {"commit": lambda: store.commit(snapshot, new), "history": lambda: store.history(limit=5)}

    with ThreadPoolExecutor(1) as pool:
        with services.frozen(firestore_emulator.pid):
            started = time.monotonic()
            future = pool.submit(calls[operation])
            while not future.done() and time.monotonic() - started < HANG_S:
                time.sleep(0.1)
            done_while_hung = future.done()
        error = future.exception(timeout=HANG_S)

    assert done_while_hung, f"{operation} still waiting after {HANG_S} s of a hung Firestore"
    assert isinstance(error, StateUnavailable)
