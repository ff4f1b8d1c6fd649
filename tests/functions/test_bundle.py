"""Each deploy bundle is self-contained and minimal: predict never imports torch or mlflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from localdev.bundle import build, requirements_of, resolve

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
        "CLOUD_RUN_ENDPOINT": "http://127.0.0.1:9",  # the client is made, never called: the event is not ours
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


@pytest.mark.system  # pip resolves each bundle's requirements against the package index
@pytest.mark.parametrize("name", ["predict", "feedback", "registry_watcher", "redeploy"])
def test_bundle_requirements_are_pinned_and_resolve_without_torch_or_mlflow(name: str) -> None:
    requirements = requirements_of(name)

    resolved = resolve(requirements)

    assert all("==" in line for line in requirements)
    assert "functions-framework" in resolved
    assert ("onnxruntime" in resolved) == (name in ("predict", "registry_watcher"))  # the gate runs the model
    assert ("google-cloud-run" in resolved) == (name == "redeploy")  # only the redeploy calls Cloud Run
    assert not resolved & {"torch", "mlflow", "mlflow-skinny", "scikit-learn", "pandas"}
