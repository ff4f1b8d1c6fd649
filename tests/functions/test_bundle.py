"""Each deploy bundle is self-contained and minimal: no function imports torch or mlflow."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from localdev.bundle import FUNCTIONS, build, canonical, imports_of, lock_path, locked, requirements_of, resolve

HEAVY = ("torch", "mlflow", "sklearn", "pandas", "matplotlib", "training", "localdev")


def test_bundle_holds_the_function_and_the_shared_package_only(tmp_path: Path) -> None:
    bundle = build("predict", tmp_path / "predict")

    names = sorted(p.name for p in bundle.iterdir())

    assert names == ["main.py", "predict_model.py", "predict_service.py", "requirements.txt", "sentiment_core"]
    assert (bundle / "sentiment_core" / "http.py").is_file()
    assert not list(bundle.rglob("__pycache__"))


UNIT_ENV = {
    "registry_watcher": {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_WEBHOOK_SECRET": "webhook-secret-0123456789",
        "SERVING_BUCKET": "serving",
        "EVAL_SET_URI": "gs://eval/yelp-sentiment/eval.jsonl",
    },
    "redeploy": {
        "PREDICT_SERVICE": "projects/p/locations/l/services/predict",
        "SERVING_BUCKET": "serving",
        "CLOUD_RUN_ENDPOINT": "http://127.0.0.1:9",  # the client is made, never called: the event is not ours
    },
    "retrain": {
        "DATA_URI": "gs://training-data/yelp-sentiment/",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "TRAINING_JOB": "projects/p/locations/l/jobs/train",
    },
}
REVIEW = 'client.post("/", json={"text": "great food"})'
# A Pub/Sub push of an event for another model: the redeploy reads its document and acknowledges it.
OTHER_MODELS_EVENT = """client.post("/", headers={"Content-Type": "application/cloudevents+json"}, json={
    "specversion": "1.0", "id": "1", "source": "//pubsub.googleapis.com/projects/p/topics/t",
    "type": "google.cloud.pubsub.topic.v1.messagePublished",
    "data": {"message": {"data": base64.b64encode(json.dumps({
        "event_id": "e1", "model_name": "another-model", "model_version": "1", "mlflow_run_id": "r",
        "model_uri": "gs://b/another-model/v1", "sha256": "0" * 64, "previous_version": None}).encode()).decode()}}})"""


@pytest.mark.parametrize(
    ("name", "target", "call", "absent"),
    [
        ("predict", "predict", REVIEW, ("google.cloud.firestore", "google.cloud.storage")),  # cold start: REST only
        ("feedback", "feedback", 'client.get("/statistics")', ()),
        ("registry_watcher", "registry_watcher", 'client.get("/status")', ("google.cloud.run_v2",)),
        (
            "redeploy",
            "on_production_changed",
            OTHER_MODELS_EVENT,
            ("onnxruntime", "numpy", "google.cloud.pubsub", "google.cloud.storage"),
        ),
        # GET /status reads Firestore only: the Cloud Run and Storage clients wait for the first tick.
        (
            "retrain",
            "retrain_check",
            'client.get("/status")',
            ("onnxruntime", "google.cloud.run_v2", "google.cloud.storage"),
        ),
    ],
)
def test_built_bundle_serves_in_isolation_without_heavy_imports(
    name: str, target: str, call: str, absent: tuple[str, ...], tmp_path: Path, function_env: dict
) -> None:
    """Import the bundle's main from the bundle alone (not the repo), serve one request, list what got imported."""
    bundle = build(name, tmp_path / name)
    script = f"""
import base64, json, sys
import functions_framework
app = functions_framework.create_app(target={target!r}, source="main.py")
client = app.test_client()
response = {call}
import sentiment_core
print(json.dumps({{"status": response.status_code, "shared": sentiment_core.__file__,
                  "modules": sorted(sys.modules)}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=bundle,
        env={**function_env, **UNIT_ENV.get(name, {}), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(bundle)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] in (200, 201)
    assert report["shared"].startswith(str(bundle))
    assert not set(HEAVY) & {m.split(".")[0] for m in report["modules"]}
    assert [m for m in report["modules"] if m.startswith(absent)] == []


@pytest.mark.system  # pip resolves each bundle's lock against the package index
@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_lock_installs_exactly_its_packages_with_hashes_and_without_torch_or_mlflow(name: str) -> None:
    """--require-hashes fails on any package the lock lacks (a transitive one too) or pins without a hash."""
    resolved = resolve(["--require-hashes", "-r", str(lock_path(name))])

    assert resolved == set(locked(name))
    assert "functions-framework" in resolved
    assert ("onnxruntime" in resolved) == (name in ("predict", "registry_watcher"))  # the gate runs the model
    assert ("google-cloud-run" in resolved) == (name in ("redeploy", "retrain"))  # the redeploy and the training job
    assert not resolved & {"torch", "mlflow", "mlflow-skinny", "scikit-learn", "pandas"}


@functools.cache
def _owners() -> dict[str, str]:
    """Installed file (absolute path) -> the distribution that installed it, for this environment."""
    owners = {}
    for distribution in metadata.distributions():
        for file in distribution.files or []:
            if file.suffix == ".py":
                owners[str(Path(distribution.locate_file(file)).resolve())] = canonical(distribution.metadata["Name"])
    return owners


def distribution_of(module: str) -> str | None:
    """The distribution that installed `module`; None for a name that is no module or a namespace package."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return _owners()[str(Path(spec.origin).resolve())]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_lock_covers_every_import_at_the_versions_the_tests_run(name: str, tmp_path: Path) -> None:
    bundle = build(name, tmp_path / name)
    lock = locked(name)

    imports = imports_of(bundle)
    needed = {module: d for module in imports if (d := distribution_of(module)) is not None}

    assert {m.split(".")[0] for m in imports} == {m.split(".")[0] for m in needed}  # each import was placed
    assert ("onnxruntime" in needed) == (name in ("predict", "registry_watcher"))  # lazy imports are seen too
    assert {module: d for module, d in needed.items() if d not in lock} == {}
    assert {d: v for d, v in lock.items() if metadata.version(d) != v} == {}  # the tests ran what deploys
    for line in requirements_of(name):
        package, version = line.split("==")
        assert lock[canonical(package)] == version, line


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bundle_lock_pins_every_package_with_a_hash(name: str) -> None:
    lines = lock_path(name).read_text().splitlines()

    pins = [i for i, line in enumerate(lines) if line and not line.startswith((" ", "#"))]

    assert len(pins) == len(locked(name)) > 10
    assert [lines[i] for i in pins if not lines[i + 1].strip().startswith("--hash=sha256:")] == []
