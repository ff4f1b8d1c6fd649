"""LocalDeployer and the local router: a new predict revision takes the traffic with no failed request."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services
from sentiment_core import events
from sentiment_core.manifest import read_staged_folder, sha256_file, write_staged_folder
from tests.functions.conftest import call, production_changed, redeploy_module
from tests.support import PROJECT

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


@pytest.fixture(scope="module")
def tiny_staged(tmp_path_factory) -> dict[str, Path]:
    """An untrained model of the contract staged as versions 1 and 2: enough for what starts or not, in seconds
    rather than the trained model's minutes."""
    import torch

    from training import export, preprocess
    from training.model import FastTextClassifier

    vocabulary = preprocess.Vocabulary.build(preprocess.tokenize(["good food", "bad food"]), min_count=1, max_size=10)
    torch.manual_seed(0)
    model = FastTextClassifier(len(vocabulary), 4).eval()
    model_bytes = export.build_onnx(model, vocabulary, export.ModelMetadata("run-1", "stars>=3", 0.5, "0" * 64))
    root = tmp_path_factory.mktemp("tiny-versions")
    for version in ("1", "2"):
        write_staged_folder(
            root / f"v{version}",
            model_bytes.SerializeToString(),
            model_name="yelp-sentiment",
            model_version=version,
            mlflow_run_id="run-1",
            threshold=0.5,
        )
    return {version: root / f"v{version}" for version in ("1", "2")}


@pytest.fixture
def tiny_router(firestore_emulator, tiny_staged, tmp_path) -> Iterator[tuple[services.Service, str]]:
    """The router serving tiny version 1, started with its MODEL_SHA256 as the local stack starts it."""
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FEEDBACK_TOKEN_SECRET": "test-secret-0123456789abcdef",
    }
    first = event(tiny_staged, "1")
    service, admin = services.start_router(
        tmp_path, env, model_uri=first.model_uri, model_version="1", model_sha256=first.sha256
    )
    with service:
        yield service, admin


@pytest.fixture
def router(function_env, staged, tmp_path) -> Iterator[tuple[services.Service, str]]:
    env = {k: v for k, v in function_env.items() if k != "MODEL_URI"}
    service, admin = services.start_router(tmp_path, env, model_uri=f"file://{staged['1']}", model_version="1")
    with service:
        yield service, admin


def event(staged: dict[str, Path], version: str, event_id: str | None = None) -> events.ProductionChanged:
    """The watcher's event for a staged version: its folder and its model file's real sha256 (MODEL_SHA256)."""
    announced = production_changed(version, f"file://{staged[version]}", event_id)
    return dataclasses.replace(announced, sha256=sha256_file(staged[version] / "model.onnx"))


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


def test_revision_given_another_sha256_never_takes_traffic_and_the_old_one_keeps_serving(
    tiny_router, tiny_staged
) -> None:
    """The staged folder is consistent with its own manifest, but not the file the event announced: the new
    predict process refuses it (503 on /healthz), so the router never switches to it."""
    service, admin = tiny_router
    swapped = dataclasses.replace(event(tiny_staged, "2"), sha256="f" * 64)
    deployer = deployers.LocalDeployer(admin, service.url, timeout_s=90)

    with pytest.raises(deployers.DeployError, match="refused the revision"):
        deployer.deploy(swapped)
    with pytest.raises(deployers.DeployError, match="refused the revision"):
        deployer.deploy_candidate(swapped, 10)

    assert list(live_pids(admin)) == ["predict-00001"]
    assert call(f"{service.url}/healthz").json["model_version"] == "1"


def test_revision_started_by_the_local_deployer_runs_with_the_events_sha256(tiny_router, tiny_staged) -> None:
    service, admin = tiny_router
    announced = event(tiny_staged, "2")

    deployed = deployers.LocalDeployer(admin, service.url).deploy(announced)

    pid = live_pids(admin)[deployed.revision]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"MODEL_SHA256={announced.sha256}".encode() in environ


def test_router_answers_with_one_server_and_one_date_header(router) -> None:
    service, _ = router

    answer = call(f"{service.url}/healthz")

    assert answer.status == 200
    assert len(answer.headers.get_all("Server")) == 1
    assert len(answer.headers.get_all("Date")) == 1


class Load:
    """Clients sending predictions through the router, each answer recorded with the phase (the split in
    place) at its start and at its end: an answer inside one phase was routed by that phase's split."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.phase = "before"
        self.answers: list[tuple[str, int, str | None, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        # A fresh emulator's first writes can take longer than predict's store bound (a 503, by design): warm it.
        deadline = time.monotonic() + 30
        while call(self.url, {"text": "warm up"}).status != 201 and time.monotonic() < deadline:
            time.sleep(0.2)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self) -> None:
        while not self._stop.is_set():
            started = self.phase
            answer = call(self.url, {"text": "the soup was lovely"})
            version = (answer.json or {}).get("details", {}).get("model_version")
            self.answers.append((started, answer.status, version or answer.error_code, self.phase))

    def versions(self, phase: str) -> collections.Counter:
        """Answers per version among those that started and ended in `phase`."""
        return collections.Counter(v for start, _, v, end in list(self.answers) if start == end == phase)

    def enter(self, phase: str, answers: int = 200) -> collections.Counter:
        """Mark `phase` (the change before it is done) and wait for `answers` answers inside it."""
        self.phase = phase
        deadline = time.monotonic() + 120  # a bound on a stuck run, not a measurement
        while sum(self.versions(phase).values()) < answers and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.versions(phase)

    def failures(self) -> list[tuple[str, int, str | None, str]]:
        return [answer for answer in self.answers if answer[1] != 201]


def live_pids(admin: str) -> dict[str, int]:
    return {target["revision"]: target["pid"] for target in call(f"{admin}/revisions").json["traffic"]}


def share(counts: collections.Counter, version: str) -> float:
    assert sum(counts.values()) >= 200, counts  # enough answers for the share to mean something
    return counts[version] / sum(counts.values())


def test_candidate_under_load_gets_each_share_then_completes_with_no_failed_request(router, staged) -> None:
    service, admin = router
    deployer = deployers.LocalDeployer(admin, service.url)

    with Load(service.url) as load:
        before = load.enter("stable only", answers=50)
        deployed = deployer.deploy_candidate(event(staged, "2"), 25)
        pids = live_pids(admin)
        at_25 = load.enter("25%")
        deployer.set_split(dataclasses.replace(deployed.split, percent=50))
        at_50 = load.enter("50%")
        done = deployer.complete(deployed.split)
        after = load.enter("completed", answers=50)

    assert load.failures() == []
    assert set(before) == {"1"}
    assert deployed.split == deployers.Split(stable="predict-00001", candidate="predict-00002", percent=25)
    assert call(f"{deployed.url}/healthz").json["model_version"] == "2"  # the candidate's own URL
    # Round robin by weight: exact over the requests the router routed; only the few in flight at a change are
    # left out of a phase's count.
    assert abs(share(at_25, "2") - 0.25) <= 0.05, at_25
    assert abs(share(at_50, "2") - 0.50) <= 0.05, at_50
    assert set(after) == {"2"}
    assert done == deployers.Deployed(revision="predict-00002", url=service.url)
    assert live_pids(admin) == {"predict-00002": pids["predict-00002"]}
    assert not services.alive(pids["predict-00001"])  # drained and stopped
    assert deployer.current_split() is None


def test_candidate_rolled_back_under_load_leaves_the_stable_revision_with_no_failed_request(router, staged) -> None:
    service, admin = router
    deployer = deployers.LocalDeployer(admin, service.url)

    with Load(service.url) as load:
        deployed = deployer.deploy_candidate(event(staged, "2"), 50)
        pids = live_pids(admin)
        at_50 = load.enter("50%")
        back = deployer.roll_back(deployed.split)
        after = load.enter("rolled back", answers=50)

    assert load.failures() == []
    assert abs(share(at_50, "2") - 0.50) <= 0.05, at_50
    assert set(after) == {"1"}
    assert back == deployers.Deployed(revision="predict-00001", url=service.url)
    assert live_pids(admin) == {"predict-00001": pids["predict-00001"]}
    assert not services.alive(pids["predict-00002"])


def test_every_traffic_change_applied_twice_changes_nothing(router, staged) -> None:
    service, admin = router
    deployer = deployers.LocalDeployer(admin, service.url)

    first = deployer.deploy_candidate(event(staged, "2"), 10)
    again = deployer.deploy_candidate(event(staged, "2"), 10)  # a redelivered event
    pids = live_pids(admin)
    split = dataclasses.replace(first.split, percent=50)
    deployer.set_split(split)
    deployer.set_split(split)
    current = deployer.current_split()
    deployer.roll_back(split)
    deployer.roll_back(split)

    assert again == first
    assert set(pids) == {"predict-00001", "predict-00002"}  # one candidate process, not two
    assert current == split
    assert live_pids(admin) == {"predict-00001": pids["predict-00001"]}
    assert call(f"{service.url}/healthz").json["model_version"] == "1"


def test_traffic_change_naming_revisions_that_are_not_live_is_refused(router, staged) -> None:
    service, admin = router
    deployer = deployers.LocalDeployer(admin, service.url)
    live = deployer.deploy_candidate(event(staged, "2"), 10)
    other = event(staged, "1", event_id="e-other")

    with pytest.raises(deployers.DeployError, match="already a candidate"):
        deployer.deploy_candidate(other, 10)
    with pytest.raises(deployers.DeployError, match="not stable"):
        deployer.set_split(deployers.Split("predict-00001", "predict-00009", 50))
    with pytest.raises(deployers.DeployError, match="not live"):
        deployer.complete(deployers.Split("predict-00001", "predict-00009", 50))

    assert deployer.current_split() == live.split
