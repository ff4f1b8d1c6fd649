"""Give the registry watcher its MLflow identity, idempotently, as the admin user over MLflow's REST API.

Creates the watcher's user if missing, the experiment training writes to (training/train.py `--experiment`) and
the registered model if missing, then grants the watcher, through the 3.0 grant API that MLflow 3.17 serves:
  EDIT on the registered model (it moves the alias `production` and tags versions in a rollout),
  READ on the experiment (with default_permission NO_PERMISSIONS, runs/get and the artifact proxy need it).
A second run finds everything in place and changes nothing. Standard library only: it runs wherever Python does.

Variables (required unless a default is given):
  MLFLOW_TRACKING_URI       the server (through `gcloud run services proxy` from a laptop)
  MLFLOW_ADMIN_PASSWORD     the admin's password (Secret Manager: sentiment-mlflow-admin-password)
  MLFLOW_WATCHER_PASSWORD   the watcher's password (Secret Manager: sentiment-mlflow-watcher-password)
  MLFLOW_ADMIN_USERNAME     default admin
  MLFLOW_WATCHER_USERNAME   default watcher
  MLFLOW_MODEL_NAME         default yelp-sentiment
  MLFLOW_EXPERIMENT_NAME    default yelp-sentiment
  MLFLOW_HOST_HEADER        (optional) the Host header to send, when it differs from the URI's host
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any


class BootstrapError(RuntimeError):
    """MLflow refused a step, or a variable is missing."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the bootstrap needs, read from the environment."""

    tracking_uri: str
    admin_username: str
    admin_password: str
    watcher_username: str
    watcher_password: str
    model_name: str = "yelp-sentiment"
    experiment_name: str = "yelp-sentiment"
    host_header: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        required = ("MLFLOW_TRACKING_URI", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WATCHER_PASSWORD")
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise BootstrapError(f"missing environment variable(s): {', '.join(missing)}")
        return cls(
            tracking_uri=env["MLFLOW_TRACKING_URI"].rstrip("/"),
            admin_username=env.get("MLFLOW_ADMIN_USERNAME", "admin"),
            admin_password=env["MLFLOW_ADMIN_PASSWORD"],
            watcher_username=env.get("MLFLOW_WATCHER_USERNAME", "watcher"),
            watcher_password=env["MLFLOW_WATCHER_PASSWORD"],
            model_name=env.get("MLFLOW_MODEL_NAME", "yelp-sentiment"),
            experiment_name=env.get("MLFLOW_EXPERIMENT_NAME", "yelp-sentiment"),
            host_header=env.get("MLFLOW_HOST_HEADER") or None,
        )


class Admin:
    """MLflow's REST API as the admin: None for a resource that does not exist, BootstrapError for a refusal."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        basic = base64.b64encode(f"{settings.admin_username}:{settings.admin_password}".encode()).decode()
        self._base = settings.tracking_uri
        self._headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        if settings.host_header:
            self._headers["Host"] = settings.host_header
        self._timeout = timeout_s

    def get(self, path: str, **query: str) -> dict[str, Any] | None:
        return self._call("GET", f"{path}?{urllib.parse.urlencode(query)}", None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self._base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            if exc.code == 404 or "RESOURCE_DOES_NOT_EXIST" in text:
                return None
            raise BootstrapError(f"{method} {path.split('?')[0]}: HTTP {exc.code}: {text[:500]}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise BootstrapError(f"{method} {path.split('?')[0]}: {exc}") from exc


def ensure_user(admin: Admin, username: str, password: str) -> bool:
    """Create the user if missing (an existing user's password is left alone); True if created."""
    if admin.get("/api/2.0/mlflow/users/get", username=username) is not None:
        return False
    admin.post("/api/2.0/mlflow/users/create", {"username": username, "password": password})
    return True


def ensure_experiment(admin: Admin, name: str) -> tuple[str, bool]:
    """The experiment's id, created if missing; and whether it was created."""
    found = admin.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)
    if found is not None:
        return found["experiment"]["experiment_id"], False
    created = admin.post("/api/2.0/mlflow/experiments/create", {"name": name})
    return created["experiment_id"], True


def ensure_registered_model(admin: Admin, name: str) -> bool:
    """Create the registered model if missing; True if created."""
    if admin.get("/api/2.0/mlflow/registered-models/get", name=name) is not None:
        return False
    admin.post("/api/2.0/mlflow/registered-models/create", {"name": name})
    return True


def ensure_permission(admin: Admin, username: str, resource_type: str, resource_id: str, permission: str) -> bool:
    """The user's own grant on the resource is `permission` (replaced if it was another); True if changed.

    The 3.0 grant refuses to overwrite an existing grant (RESOURCE_ALREADY_EXISTS), so a different one is
    revoked first.
    """
    key = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    listed = admin.get("/api/3.0/mlflow/users/permissions/list", username=username) or {}
    current = [
        row["permission"]
        for row in listed.get("permissions", [])
        if row["resource_type"] == resource_type and row["resource_pattern"] == resource_id
    ]
    if current == [permission]:
        return False
    if current:
        admin.post("/api/3.0/mlflow/users/permissions/revoke", key)
    admin.post("/api/3.0/mlflow/users/permissions/grant", {**key, "permission": permission})
    return True


def bootstrap(settings: Settings) -> dict[str, bool]:
    """Every step, in order; for each, whether it changed anything."""
    admin = Admin(settings)
    changed = {"user": ensure_user(admin, settings.watcher_username, settings.watcher_password)}
    experiment_id, changed["experiment"] = ensure_experiment(admin, settings.experiment_name)
    changed["registered_model"] = ensure_registered_model(admin, settings.model_name)
    changed["model_edit"] = ensure_permission(
        admin, settings.watcher_username, "registered_model", settings.model_name, "EDIT"
    )
    changed["experiment_read"] = ensure_permission(
        admin, settings.watcher_username, "experiment", experiment_id, "READ"
    )
    return changed


def main() -> None:
    """Run the bootstrap from the environment; print what changed as one JSON line."""
    try:
        changed = bootstrap(Settings.from_env(os.environ))
    except BootstrapError as exc:
        sys.stderr.write(f"infra/mlflow/bootstrap.py: {exc}\n")
        raise SystemExit(1) from None
    sys.stdout.write(json.dumps({"changed": changed}) + "\n")


if __name__ == "__main__":
    main()
