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


WATCHER_ENV = {
    "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    "MLFLOW_WEBHOOK_SECRET": "webhook-secret-0123456789",
    "SERVING_BUCKET": "serving",
    "PREDICT_SERVICE": "projects/p/locations/l/services/predict",
}


@pytest.mark.parametrize(
    ("name", "route", "absent"),
    [
        ("predict", "/", ("google.cloud.firestore", "google.cloud.storage")),  # cold start: REST writer only
        ("feedback", "/statistics", ()),
        ("registry_watcher", "/status", ()),
    ],
)
def test_built_bundle_serves_in_isolation_without_heavy_imports(
    name: str, route: str, absent: tuple[str, ...], tmp_path: Path, function_env: dict
) -> None:
    """Import the bundle's main from the bundle alone (not the repo), serve one request, list what got imported."""
    bundle = build(name, tmp_path / name)
    script = f"""
import json, sys
import functions_framework
app = functions_framework.create_app(target={name!r}, source="main.py")
client = app.test_client()
response = client.post("/", json={{"text": "great food"}}) if {route!r} == "/" else client.get({route!r})
import sentiment_core
print(json.dumps({{"status": response.status_code, "shared": sentiment_core.__file__,
                  "modules": sorted(sys.modules)}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=bundle,
        env={**function_env, **WATCHER_ENV, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(bundle)},
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
@pytest.mark.parametrize("name", ["predict", "feedback", "registry_watcher"])
def test_bundle_requirements_are_pinned_and_resolve_without_torch_or_mlflow(name: str) -> None:
    requirements = requirements_of(name)

    resolved = resolve(requirements)

    assert all("==" in line for line in requirements)
    assert "functions-framework" in resolved
    assert ("onnxruntime" in resolved) == (name in ("predict", "registry_watcher"))  # the gate runs the model
    assert not resolved & {"torch", "mlflow", "mlflow-skinny", "scikit-learn", "pandas"}
