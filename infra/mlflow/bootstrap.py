"""Give the registry watcher and training their MLflow identities, idempotently, as the admin over MLflow's REST API.

Creates the watcher's and the trainer's users if missing, the experiment training writes to (training/train.py
`--experiment`) and the registered model if missing, then grants, through the 3.0 grant API that MLflow 3.17
serves:
  the watcher EDIT on the registered model (it moves the alias `production` and tags versions in a rollout),
  the watcher READ on the experiment (with default_permission NO_PERMISSIONS, runs/get and the artifact proxy
  need it),
  the trainer EDIT on the experiment (create runs, log metrics, tags and artifacts through the proxy) and EDIT on
  the registered model (register versions). Training never runs as the admin: the trainer cannot manage
  permissions, users, webhooks or delete the model. MLflow needs the same EDIT to register a version and to set
  an alias, so the trainer could also move `production`; the registry watcher's own evaluation set, which no
  training identity can write, is what stops a bad model then (docs/promotion.md).
With MLFLOW_WEBHOOK_URL, it also registers MLflow's webhook for alias moves to the watcher's receiver, signed
with MLFLOW_WEBHOOK_SECRET (one webhook of that name; replaced when its URL or events differ: MLflow never shows
a stored secret, so rotating the secret is `--replace-webhook`).
A second run finds everything in place and changes nothing; `--check` changes nothing and exits 0 when nothing
would change, 1 otherwise. Standard library only: it runs wherever Python does.

Variables (required unless a default is given):
  MLFLOW_TRACKING_URI       the server (through `gcloud run services proxy` from a laptop)
  MLFLOW_ADMIN_PASSWORD     the admin's password (Secret Manager: sentiment-mlflow-admin-password)
  MLFLOW_WATCHER_PASSWORD   the watcher's password (Secret Manager: sentiment-mlflow-watcher-password)
  MLFLOW_TRAINER_PASSWORD   the trainer's password (Secret Manager: sentiment-mlflow-trainer-password)
  MLFLOW_ADMIN_USERNAME     default admin
  MLFLOW_WATCHER_USERNAME   default watcher
  MLFLOW_TRAINER_USERNAME   default trainer
  MLFLOW_MODEL_NAME         default yelp-sentiment
  MLFLOW_EXPERIMENT_NAME    default yelp-sentiment
  MLFLOW_HOST_HEADER        (optional) the Host header to send, when it differs from the URI's host
  MLFLOW_IAM_TOKEN          (optional) a Google identity token: MLflow on Cloud Run behind IAM, called directly
                            (sent as X-Serverless-Authorization, beside MLflow's own basic auth)
  MLFLOW_WEBHOOK_URL        (optional) the watcher's webhook receiver, with path /webhook
  MLFLOW_WEBHOOK_SECRET     its HMAC secret (required with MLFLOW_WEBHOOK_URL; Secret Manager: sentiment-mlflow-webhook)
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
    trainer_password: str = ""  # required by from_env; a default only so that positional construction keeps working
    trainer_username: str = "trainer"
    model_name: str = "yelp-sentiment"
    experiment_name: str = "yelp-sentiment"
    host_header: str | None = None
    iam_token: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        required = (
            "MLFLOW_TRACKING_URI",
            "MLFLOW_ADMIN_PASSWORD",
            "MLFLOW_WATCHER_PASSWORD",
            "MLFLOW_TRAINER_PASSWORD",
        )
        if env.get("MLFLOW_WEBHOOK_URL"):
            required += ("MLFLOW_WEBHOOK_SECRET",)
        missing = [name for name in required if not env.get(name)]
        if missing:
            raise BootstrapError(f"missing environment variable(s): {', '.join(missing)}")
        return cls(
            tracking_uri=env["MLFLOW_TRACKING_URI"].rstrip("/"),
            admin_username=env.get("MLFLOW_ADMIN_USERNAME", "admin"),
            admin_password=env["MLFLOW_ADMIN_PASSWORD"],
            watcher_username=env.get("MLFLOW_WATCHER_USERNAME", "watcher"),
            watcher_password=env["MLFLOW_WATCHER_PASSWORD"],
            trainer_password=env["MLFLOW_TRAINER_PASSWORD"],
            trainer_username=env.get("MLFLOW_TRAINER_USERNAME", "trainer"),
            model_name=env.get("MLFLOW_MODEL_NAME", "yelp-sentiment"),
            experiment_name=env.get("MLFLOW_EXPERIMENT_NAME", "yelp-sentiment"),
            host_header=env.get("MLFLOW_HOST_HEADER") or None,
            iam_token=env.get("MLFLOW_IAM_TOKEN") or None,
            webhook_url=env.get("MLFLOW_WEBHOOK_URL") or None,
            webhook_secret=env.get("MLFLOW_WEBHOOK_SECRET") or None,
        )


class Admin:
    """MLflow's REST API as the admin: None for a resource that does not exist, BootstrapError for a refusal."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        basic = base64.b64encode(f"{settings.admin_username}:{settings.admin_password}".encode()).decode()
        self._base = settings.tracking_uri
        self._headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        if settings.host_header:
            self._headers["Host"] = settings.host_header
        if settings.iam_token:
            self._headers["X-Serverless-Authorization"] = f"Bearer {settings.iam_token}"
        self._timeout = timeout_s

    def get(self, path: str, **query: str) -> dict[str, Any] | None:
        return self._call("GET", f"{path}?{urllib.parse.urlencode(query)}", None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self._call("POST", path, body)

    def delete(self, path: str) -> dict[str, Any] | None:
        return self._call("DELETE", path, None)

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


def ensure_user(admin: Admin, username: str, password: str, apply: bool = True) -> bool:
    """Create the user if missing (an existing user's password is left alone); True if created (or, with
    apply=False, if it would be)."""
    if admin.get("/api/2.0/mlflow/users/get", username=username) is not None:
        return False
    if apply:
        admin.post("/api/2.0/mlflow/users/create", {"username": username, "password": password})
    return True


def ensure_experiment(admin: Admin, name: str, apply: bool = True) -> tuple[str | None, bool]:
    """The experiment's id, created if missing (None when it is missing and apply=False); and whether it was."""
    found = admin.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=name)
    if found is not None:
        return found["experiment"]["experiment_id"], False
    if not apply:
        return None, True
    created = admin.post("/api/2.0/mlflow/experiments/create", {"name": name})
    return created["experiment_id"], True


def ensure_registered_model(admin: Admin, name: str, apply: bool = True) -> bool:
    """Create the registered model if missing; True if created (or, with apply=False, if it would be)."""
    if admin.get("/api/2.0/mlflow/registered-models/get", name=name) is not None:
        return False
    if apply:
        admin.post("/api/2.0/mlflow/registered-models/create", {"name": name})
    return True


WEBHOOK_NAME = "registry-watcher"
WEBHOOK_EVENTS = [
    {"entity": "MODEL_VERSION_ALIAS", "action": "CREATED"},
    {"entity": "MODEL_VERSION_ALIAS", "action": "DELETED"},
]


def ensure_webhook(admin: Admin, url: str, secret: str, replace: bool = False, apply: bool = True) -> bool:
    """One active webhook named WEBHOOK_NAME to `url` for alias moves; True if (re)created."""
    hooks = (admin.get("/api/2.0/mlflow/webhooks", max_results="100") or {}).get("webhooks", [])
    ours = [hook for hook in hooks if hook.get("name") == WEBHOOK_NAME]
    wanted = sorted((e["entity"], e["action"]) for e in WEBHOOK_EVENTS)

    def current(hook: dict[str, Any]) -> bool:
        events = sorted((e.get("entity"), e.get("action")) for e in hook.get("events", []))
        return hook.get("url") == url and events == wanted and hook.get("status", "ACTIVE") == "ACTIVE"

    if len(ours) == 1 and current(ours[0]) and not replace:
        return False
    if apply:
        for hook in ours:
            admin.delete(f"/api/2.0/mlflow/webhooks/{hook['webhook_id']}")
        body = {"name": WEBHOOK_NAME, "url": url, "events": WEBHOOK_EVENTS, "secret": secret, "status": "ACTIVE"}
        admin.post("/api/2.0/mlflow/webhooks", body)
    return True


def ensure_permission(
    admin: Admin, username: str, resource_type: str, resource_id: str | None, permission: str, apply: bool = True
) -> bool:
    """The user's own grant on the resource is `permission` (replaced if it was another); True if changed.

    The 3.0 grant refuses to overwrite an existing grant (RESOURCE_ALREADY_EXISTS), so a different one is
    revoked first.
    """
    if resource_id is None:  # the resource does not exist yet (apply=False): neither does the grant
        return True
    key = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    listed = admin.get("/api/3.0/mlflow/users/permissions/list", username=username) or {}
    current = [
        row["permission"]
        for row in listed.get("permissions", [])
        if row["resource_type"] == resource_type and row["resource_pattern"] == resource_id
    ]
    if current == [permission]:
        return False
    if not apply:
        return True
    if current:
        admin.post("/api/3.0/mlflow/users/permissions/revoke", key)
    admin.post("/api/3.0/mlflow/users/permissions/grant", {**key, "permission": permission})
    return True


def bootstrap(settings: Settings, apply: bool = True, replace_webhook: bool = False) -> dict[str, bool]:
    """Every step, in order; for each, whether it changed anything (with apply=False: whether it would)."""
    admin = Admin(settings)
    changed = {"user": ensure_user(admin, settings.watcher_username, settings.watcher_password, apply)}
    experiment_id, changed["experiment"] = ensure_experiment(admin, settings.experiment_name, apply)
    changed["registered_model"] = ensure_registered_model(admin, settings.model_name, apply)
    model = settings.model_name if apply or not changed["registered_model"] else None
    changed["model_edit"] = ensure_permission(
        admin, settings.watcher_username, "registered_model", model, "EDIT", apply
    )
    changed["experiment_read"] = ensure_permission(
        admin, settings.watcher_username, "experiment", experiment_id, "READ", apply
    )
    changed["trainer"] = ensure_user(admin, settings.trainer_username, settings.trainer_password, apply)
    changed["trainer_experiment_edit"] = ensure_permission(
        admin, settings.trainer_username, "experiment", experiment_id, "EDIT", apply
    )
    changed["trainer_model_edit"] = ensure_permission(
        admin, settings.trainer_username, "registered_model", model, "EDIT", apply
    )
    if settings.webhook_url:
        changed["webhook"] = ensure_webhook(
            admin, settings.webhook_url, settings.webhook_secret, replace_webhook, apply
        )
    return changed


def main(argv: list[str] | None = None) -> None:
    """Run the bootstrap from the environment; print what changed (or would) as one JSON line.

    --check: change nothing; exit 0 when everything is in place, 1 when something would change.
    --replace-webhook: register the webhook again even if it looks current (a rotated secret).
    """
    args = sys.argv[1:] if argv is None else argv
    unknown = [arg for arg in args if arg not in ("--check", "--replace-webhook")]
    if unknown:
        sys.stderr.write(f"infra/mlflow/bootstrap.py: unknown argument(s) {' '.join(unknown)}\n")
        raise SystemExit(2)
    check = "--check" in args
    try:
        changed = bootstrap(Settings.from_env(os.environ), apply=not check, replace_webhook="--replace-webhook" in args)
    except BootstrapError as exc:
        sys.stderr.write(f"infra/mlflow/bootstrap.py: {exc}\n")
        raise SystemExit(1) from None
    sys.stdout.write(json.dumps({"would_change" if check else "changed": changed}) + "\n")
    if check and any(changed.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
