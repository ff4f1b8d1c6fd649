"""LocalDeployer and the local router: a new predict revision takes the traffic with no failed request."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services
from sentiment_core import events
from sentiment_core.manifest import read_staged_folder, write_staged_folder
from tests.functions.conftest import call, redeploy_module

deployers = redeploy_module("deployers")


@pytest.fixture(scope="module")
def staged(trained, tmp_path_factory) -> dict[str, Path]:
    """The trained model staged as two versions, as the watcher would stage them."""
    manifest, model_bytes = read_staged_folder(Path(trained["staged_dir"]))
    root = tmp_path_factory.mktemp("staged-versions")
    for version in ("1", "2"):
        write_staged_folder(
            root / f"v{version}",
            model_bytes,
            model_name=manifest.model_name,
            model_version=version,
            mlflow_run_id=manifest.mlflow_run_id,
            threshold=manifest.threshold,
        )
    return {version: root / f"v{version}" for version in ("1", "2")}


@pytest.fixture
def router(function_env, staged, tmp_path) -> Iterator[tuple[services.Service, str]]:
    env = {k: v for k, v in function_env.items() if k != "MODEL_URI"}
    service, admin = services.start_router(tmp_path, env, model_uri=f"file://{staged['1']}", model_version="1")
    with service:
        yield service, admin


def event(staged: dict[str, Path], version: str) -> object:
    return events.ProductionChanged(
        event_id=f"e{version}",
        model_name="yelp-sentiment",
        model_version=version,
        mlflow_run_id="r",
        model_uri=f"file://{staged[version]}",
        sha256="0" * 64,
        previous_version=None,
    )


def test_deploy_under_load_switches_versions_with_no_failed_request(router, staged) -> None:
    service, admin = router
    old_pid = call(f"{admin}/revisions").json["pid"]
    # A fresh emulator's first writes can take longer than predict's store bound (a 503, by design): warm it.
    deadline = time.monotonic() + 30
    while call(service.url, {"text": "warm up"}).status != 201 and time.monotonic() < deadline:
        time.sleep(0.2)
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answer = call(service.url, {"text": "the soup was lovely"})
            version = (answer.json or {}).get("details", {}).get("model_version")
            answers.append((time.monotonic(), answer.status, version or answer.error_code))

    clients = [threading.Thread(target=client) for _ in range(4)]
    started = time.monotonic()
    for thread in clients:
        thread.start()
    time.sleep(1.0)  # load before the switch
    deployed = deployers.LocalDeployer(admin, service.url).deploy(event(staged, "2"))
    time.sleep(1.0)  # and after it
    stop.set()
    for thread in clients:
        thread.join(30)
    print(f"\n{len(answers) / (time.monotonic() - started):.1f} requests/s through the switch")

    assert deployed.revision == "predict-00002"
    assert {status for _, status, _ in answers} == {201}, [a for a in answers if a[1] != 201][:5]
    versions = [version for _, _, version in sorted(answers)]
    assert versions[0] == "1"
    assert versions[-1] == "2"
    assert call(f"{service.url}/healthz").json["model_version"] == "2"
    assert not services.alive(old_pid)  # drained and stopped


def test_revision_that_cannot_start_is_a_deploy_error_and_the_old_one_keeps_serving(router, staged, tmp_path) -> None:
    service, admin = router
    broken = tmp_path / "broken"
    broken.mkdir()
    bad = dataclasses.replace(event(staged, "2"), model_version="3", model_uri=f"file://{broken}")

    with pytest.raises(deployers.DeployError, match="refused the revision"):
        deployers.LocalDeployer(admin, service.url, timeout_s=90).deploy(bad)

    assert call(f"{service.url}/healthz").json["model_version"] == "1"
    assert call(service.url, {"text": "fine"}).status == 201


def test_router_answers_with_one_server_and_one_date_header(router) -> None:
    service, _ = router

    answer = call(f"{service.url}/healthz")

    assert answer.status == 200
    assert len(answer.headers.get_all("Server")) == 1
    assert len(answer.headers.get_all("Date")) == 1
