"""MLflow started the cloud way (infra/mlflow/serve.py: basic auth, secret key, allowed hosts), the watcher's
identity from infra/mlflow/bootstrap.py, and the deploy gate reading through it as the watcher with Cloud Run's
Host header. SQLite and a local folder stand in for Cloud SQL and GCS; everything else is what mlflow.tf runs.

Each of issue #18's problems 1, 3 and 4 makes a test here fail: no secret key, no start; a Host not allowed, 403;
no READ on the experiment, the gate cannot read the run.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services
from sentiment_core.contract import (
    GOLDEN_OUTPUTS_ARTIFACT,
    MODEL_FILENAME,
    MODEL_NAME,
    PRODUCTION_ALIAS,
    REFERENCE_ARTIFACT,
)
from sentiment_core.registry import RegistryClient, RegistryError
from tests.functions.conftest import watcher_module
from tests.functions.watcher_support import GATE_METRICS, log_gate_run
from tests.infra.terraform_config import resources, unquote

gate = watcher_module("gate")

REPO_ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DIR = REPO_ROOT / "infra" / "mlflow"
SERVE = MLFLOW_DIR / "serve.py"
BOOTSTRAP = MLFLOW_DIR / "bootstrap.py"
MLFLOW_TF = REPO_ROOT / "infra" / "terraform" / "mlflow.tf"

RUN_APP_HOST = "mlflow-abc-ew.a.run.app"  # the form of a Cloud Run service's default URL
ADMIN_PASSWORD = "admin-password-for-tests-0123"
WATCHER_PASSWORD = "watcher-password-for-tests-0123"
TRAINER_PASSWORD = "trainer-password-for-tests-0123"
EXPERIMENT = "yelp-sentiment"  # training/train.py's default --experiment


def load(path: Path) -> types.ModuleType:
    """A script of infra/mlflow as a module (the folder is no package: the image copies the files alone)."""
    spec = importlib.util.spec_from_file_location(f"infra_mlflow_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


serve = load(SERVE)
bootstrap = load(BOOTSTRAP)


def serve_env(workdir: Path) -> dict[str, str]:
    """The variables mlflow.tf sets, with SQLite and a local folder for Cloud SQL and GCS."""
    auth_ini = workdir / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {ADMIN_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(workdir / "artifacts"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret-key-0123456789",
        # The cloud's pattern, and loopback for the tests' own admin client (MlflowClient sends the URI's host).
        "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow-*.run.app,127.0.0.1:*",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # Only here: the test's webhook target is a loopback http URL. In the cloud the receiver is an https
        # run.app name, which MLflow's defaults (https only, no private addresses) accept.
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "pwG3hzJ3B0zJ0n3Ywq9m0VbqvYk3sX1qJ6oA2YwG8pE=",
    }


@pytest.fixture(scope="module")
def cloud_mlflow() -> Iterator[services.Service]:
    """MLflow started through infra/mlflow/serve.py with the cloud's flags."""
    with tempfile.TemporaryDirectory(prefix="mlflow-cloud-") as tmp:
        workdir = Path(tmp)
        port = services.free_port()
        env = {**serve_env(workdir), "PORT": str(port)}
        with services.start(
            "mlflow-cloud",
            [sys.executable, str(SERVE)],
            url=f"http://127.0.0.1:{port}",
            ready_path="/health",
            log_path=workdir / "mlflow.log",
            env=env,
            timeout_s=120,
        ) as service:
            yield service


WEBHOOK_URL = "http://127.0.0.1:9/webhook"  # MLflow resolves the host when it registers a webhook


def run_bootstrap(url: str, *args: str, webhook_url: str = WEBHOOK_URL, expect_code: int = 0) -> dict[str, bool]:
    """infra/mlflow/bootstrap.py as the deployment runs it, through Cloud Run's Host name (with an identity token,
    which the local server ignores); what it changed, or with --check what it would change."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_WATCHER_PASSWORD": WATCHER_PASSWORD,
        "MLFLOW_TRAINER_PASSWORD": TRAINER_PASSWORD,
        "MLFLOW_HOST_HEADER": RUN_APP_HOST,
        "MLFLOW_IAM_TOKEN": "identity-token",
        "MLFLOW_WEBHOOK_URL": webhook_url,
        "MLFLOW_WEBHOOK_SECRET": "webhook-secret-0123456789",
    }
    result = subprocess.run(
        [sys.executable, str(BOOTSTRAP), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == expect_code, result.stderr
    answer = json.loads(result.stdout)
    return answer["would_change" if "--check" in args else "changed"]


@contextlib.contextmanager
def as_admin(url: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> Iterator[object]:
    """An MlflowClient logged in as the admin, or as `username` (MLflow reads the credentials from the
    environment)."""
    from mlflow import MlflowClient

    saved = dict(os.environ)
    os.environ.update({"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password})
    try:
        yield MlflowClient(url)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def registered(cloud_mlflow: services.Service, trained: dict) -> dict[str, object]:
    """Bootstrapped, then the trained model registered and promoted by the admin, in training's experiment."""
    first = run_bootstrap(cloud_mlflow.url)
    source = RegistryClient(trained["tracking_uri"], timeout=10)
    base = source.version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)
    run = source.run(base.run_id)
    model_bytes = source.download(source.model_artifact_uri(base), MODEL_FILENAME)
    golden = json.loads(source.download(run.artifact_uri, GOLDEN_OUTPUTS_ARTIFACT))
    reference = json.loads(source.download(run.artifact_uri, REFERENCE_ARTIFACT))
    with as_admin(cloud_mlflow.url) as client:
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        run_id = client.create_run(experiment_id).info.run_id
        metrics = {name: run.metrics[name] for name in GATE_METRICS}
        log_gate_run(client, run_id, model_bytes, golden=golden, reference=reference, metrics=metrics)
        artifact_uri = client.get_run(run_id).info.artifact_uri
        version = client.create_model_version(MODEL_NAME, f"{artifact_uri}/model", run_id).version
        client.set_registered_model_alias(MODEL_NAME, PRODUCTION_ALIAS, version)
    return {"first_bootstrap": first, "experiment_id": experiment_id, "version": str(version)}


def watcher(url: str, host: str = RUN_APP_HOST) -> RegistryClient:
    """The registry watcher's client as Cloud Run reaches MLflow: its own user, the service's Host name."""
    return RegistryClient(url, username="watcher", password=WATCHER_PASSWORD, host=host, timeout=10)


def fetch_and_judge(registry: RegistryClient) -> object:
    version = registry.production_version(MODEL_NAME)
    return gate.judge(gate.fetch_candidate(registry, version), min_val_accuracy=0.9)


@pytest.mark.system
def test_gate_through_mlflow_started_the_cloud_way_accepts_the_trained_version(cloud_mlflow, registered) -> None:
    verdict = fetch_and_judge(watcher(cloud_mlflow.url))

    assert registered["first_bootstrap"] == dict.fromkeys(
        (
            "user",
            "experiment",
            "registered_model",
            "model_edit",
            "experiment_read",
            "trainer",
            "trainer_experiment_edit",
            "trainer_model_edit",
            "webhook",
        ),
        True,
    )
    assert verdict.accepted, verdict


@pytest.mark.system
def test_watcher_may_tag_versions_and_move_the_alias(cloud_mlflow, registered) -> None:
    registry = watcher(cloud_mlflow.url)

    registry.set_version_tag(MODEL_NAME, registered["version"], "deployment_status", "test")
    registry.set_alias(MODEL_NAME, PRODUCTION_ALIAS, registered["version"])

    assert registry.production_version(MODEL_NAME).version == registered["version"]


@pytest.mark.system
def test_trainer_logs_a_run_and_registers_a_version_as_training_does(cloud_mlflow, registered, trained) -> None:
    source = RegistryClient(trained["tracking_uri"], timeout=10)
    base = source.version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)
    run = source.run(base.run_id)
    model_bytes = source.download(source.model_artifact_uri(base), MODEL_FILENAME)
    golden = json.loads(source.download(run.artifact_uri, GOLDEN_OUTPUTS_ARTIFACT))
    reference = json.loads(source.download(run.artifact_uri, REFERENCE_ARTIFACT))

    with as_admin(cloud_mlflow.url, "trainer", TRAINER_PASSWORD) as client:
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        run_id = client.create_run(experiment_id).info.run_id
        metrics = {name: run.metrics[name] for name in GATE_METRICS}
        log_gate_run(client, run_id, model_bytes, golden=golden, reference=reference, metrics=metrics)
        artifact_uri = client.get_run(run_id).info.artifact_uri
        version = client.create_model_version(MODEL_NAME, f"{artifact_uri}/model", run_id).version

    assert int(version) > int(registered["version"])
    assert watcher(cloud_mlflow.url).run(run_id).tags  # the watcher reads what the trainer logged


@pytest.mark.system
@pytest.mark.parametrize(
    "forbidden",
    [
        lambda client: client.delete_registered_model(MODEL_NAME),
        lambda client: client.delete_experiment(client.get_experiment_by_name(EXPERIMENT).experiment_id),
    ],
    ids=["delete-the-model", "delete-the-experiment"],
)
def test_trainer_cannot_manage_what_it_writes_to(cloud_mlflow, registered, forbidden) -> None:
    from mlflow.exceptions import MlflowException

    with as_admin(cloud_mlflow.url, "trainer", TRAINER_PASSWORD) as client, pytest.raises(MlflowException) as raised:
        forbidden(client)

    assert raised.value.get_http_status_code() in (401, 403), raised.value


@pytest.mark.system
def test_trainer_cannot_grant_itself_permissions(cloud_mlflow, registered) -> None:
    trainer = bootstrap.Admin(bootstrap.Settings(cloud_mlflow.url, "trainer", TRAINER_PASSWORD, "watcher", "x"))
    grant = {"username": "trainer", "resource_type": "registered_model", "resource_id": MODEL_NAME}

    with pytest.raises(bootstrap.BootstrapError, match="HTTP 403"):
        trainer.post("/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "MANAGE"})


def test_bootstrap_without_the_trainer_password_exits_naming_it() -> None:
    env = {"MLFLOW_TRACKING_URI": "http://x", "MLFLOW_ADMIN_PASSWORD": "a", "MLFLOW_WATCHER_PASSWORD": "w"}

    with pytest.raises(bootstrap.BootstrapError, match="MLFLOW_TRAINER_PASSWORD"):
        bootstrap.Settings.from_env(env)


@pytest.mark.system
def test_bootstrap_run_again_changes_nothing(cloud_mlflow, registered) -> None:
    assert run_bootstrap(cloud_mlflow.url) == dict.fromkeys(registered["first_bootstrap"], False)
    assert run_bootstrap(cloud_mlflow.url, "--check") == dict.fromkeys(registered["first_bootstrap"], False)


def webhooks(url: str) -> list[dict]:
    admin = bootstrap.Admin(
        bootstrap.Settings(url, "admin", ADMIN_PASSWORD, "watcher", WATCHER_PASSWORD, host_header=RUN_APP_HOST)
    )
    return admin.get("/api/2.0/mlflow/webhooks", max_results="100")["webhooks"]


@pytest.mark.system
def test_bootstrap_registers_one_webhook_for_alias_moves_and_check_changes_nothing(cloud_mlflow, registered) -> None:
    moved = "http://127.0.0.1:10/webhook"

    would = run_bootstrap(cloud_mlflow.url, "--check", webhook_url=moved, expect_code=1)
    before = webhooks(cloud_mlflow.url)
    replaced = run_bootstrap(cloud_mlflow.url, webhook_url=moved)
    after = webhooks(cloud_mlflow.url)
    run_bootstrap(cloud_mlflow.url)  # back to the module's URL for the other tests

    assert would == {**dict.fromkeys(registered["first_bootstrap"], False), "webhook": True}
    assert [(h["name"], h["url"]) for h in before] == [("registry-watcher", WEBHOOK_URL)]
    assert sorted((e["entity"], e["action"]) for e in before[0]["events"]) == [
        ("MODEL_VERSION_ALIAS", "CREATED"),
        ("MODEL_VERSION_ALIAS", "DELETED"),
    ]
    assert replaced["webhook"] is True
    assert [h["url"] for h in after] == [moved]


@pytest.mark.system
@pytest.mark.parametrize("host", ["evil.example.com", f"{RUN_APP_HOST}.evil.example.com", "localhost:5000"])
def test_host_not_allowed_is_refused_with_403(cloud_mlflow, registered, host: str) -> None:
    with pytest.raises(RegistryError, match="HTTP 403"):
        watcher(cloud_mlflow.url, host=host).production_version(MODEL_NAME)


@pytest.mark.system
def test_uptime_check_path_answers_without_mlflow_credentials_through_the_run_app_host(cloud_mlflow) -> None:
    """monitoring.tf's uptime check sends Cloud Run an identity token but no MLflow credentials: its path must be
    one that basic auth leaves open, while everything else still asks for them."""
    path = unquote(resources("google_monitoring_uptime_check_config")["mlflow"]["http_check"][0]["path"])
    server = urllib.parse.urlsplit(cloud_mlflow.url)

    def status(target: str) -> int:
        connection = http.client.HTTPConnection(server.hostname, server.port, timeout=10)
        try:
            connection.request("GET", target, headers={"Host": RUN_APP_HOST})
            return connection.getresponse().status
        finally:
            connection.close()

    assert status(path) == 200
    assert status("/api/2.0/mlflow/registered-models/search") == 401


@pytest.mark.system
def test_gate_without_read_on_the_experiment_cannot_read_the_run(cloud_mlflow, registered) -> None:
    revoke = {"username": "watcher", "resource_type": "experiment", "resource_id": registered["experiment_id"]}
    admin = bootstrap.Admin(bootstrap.Settings(cloud_mlflow.url, "admin", ADMIN_PASSWORD, "watcher", WATCHER_PASSWORD))
    admin.post("/api/3.0/mlflow/users/permissions/revoke", revoke)
    try:
        with pytest.raises(RegistryError, match="HTTP 403"):
            fetch_and_judge(watcher(cloud_mlflow.url))
    finally:
        repaired = run_bootstrap(cloud_mlflow.url)

    assert repaired["experiment_read"] is True
    assert fetch_and_judge(watcher(cloud_mlflow.url)).accepted


@pytest.mark.parametrize(
    "missing",
    [
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_ARTIFACTS_DESTINATION",
        "MLFLOW_AUTH_CONFIG_PATH",
    ],
)
def test_serve_without_a_required_variable_exits_naming_it(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in {**os.environ, **serve_env(tmp_path)}.items() if k != missing}

    result = subprocess.run([sys.executable, str(SERVE)], env=env, capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert missing in result.stderr


def test_server_command_runs_basic_auth_with_the_password_url_encoded_in_its_environment_only(tmp_path: Path) -> None:
    env = {
        **serve_env(tmp_path),
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://mlflow@10.0.0.3/mlflow",
        "MLFLOW_BACKEND_STORE_PASSWORD": "p@ss/w:rd",
    }

    argv, child_env = serve.server_command(env)

    flags = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert flags["--app-name"] == "basic-auth"
    assert flags["--allowed-hosts"] == "mlflow-*.run.app,127.0.0.1:*"
    assert flags["--port"] == "8080"
    assert child_env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://mlflow:p%40ss%2Fw%3Ard@10.0.0.3/mlflow"
    assert "MLFLOW_BACKEND_STORE_PASSWORD" not in child_env
    assert not [arg for arg in argv if "p%40ss" in arg or "p@ss" in arg or "postgresql" in arg]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow-*.run.app, *"}, "not '\\*'"),
        ({"MLFLOW_WORKERS": "two"}, "MLFLOW_WORKERS must be a whole number"),
        ({"MLFLOW_AUTH_CONFIG_PATH": "/nonexistent/basic_auth.ini"}, "no file at"),
        ({"MLFLOW_BACKEND_STORE_PASSWORD": "x", "MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"}, "must name a user"),
    ],
)
def test_server_command_refuses_wrong_settings(tmp_path: Path, change: dict[str, str], message: str) -> None:
    with pytest.raises(serve.ConfigError, match=message):
        serve.server_command({**serve_env(tmp_path), **change})


def mlflow_service() -> dict:
    """infra/terraform/mlflow.tf's Cloud Run service, parsed."""
    import hcl2

    for block in hcl2.loads(MLFLOW_TF.read_text())["resource"]:
        for kind, named in block.items():
            if kind.strip('"') == "google_cloud_run_v2_service":
                return named['"mlflow"'] if '"mlflow"' in named else named["mlflow"]
    raise AssertionError("no google_cloud_run_v2_service in mlflow.tf")


def test_dockerfile_copies_serve_and_bootstrap_and_starts_through_serve() -> None:
    dockerfile = (MLFLOW_DIR / "Dockerfile").read_text()

    copied = re.findall(r"^COPY (.+) (\S+)$", dockerfile, re.M)
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)

    assert copied == [("requirements.txt", "/opt/mlflow/requirements.txt"), ("serve.py bootstrap.py", "/opt/mlflow/")]
    assert json.loads(entrypoint) == ["python", "/opt/mlflow/serve.py"]
    assert re.search(r"^CMD ", dockerfile, re.M) is None
    assert "pip install --no-cache-dir --require-hashes --no-deps -r /opt/mlflow/requirements.txt" in dockerfile


def test_dockerfile_lock_pins_the_projects_mlflow_with_hashes() -> None:
    lock = (MLFLOW_DIR / "requirements.txt").read_text()
    pins = [line for line in lock.splitlines() if line and not line.startswith((" ", "#"))]

    assert "mlflow==3.17.2 \\" in pins
    assert "mlflow-skinny==3.17.2 \\" in pins
    assert len(re.findall(r"^    --hash=sha256:", lock, re.M)) >= len(pins) > 20


def test_cloud_run_runs_the_image_entry_point_with_every_variable_serve_requires() -> None:
    (container,) = mlflow_service()["template"][0]["containers"]
    env = {entry["name"].strip('"'): entry for entry in container["env"]}

    secrets = {name for name, entry in env.items() if "value_source" in entry}

    assert "command" not in container
    assert "args" not in container
    assert set(serve.REQUIRED) <= set(env)
    assert {"MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_PASSWORD"} <= secrets
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].strip('"') == "mlflow-*.run.app"
    assert "PORT" not in env  # Cloud Run sets it from container_port and refuses it as a variable


def test_cloud_run_allowed_hosts_accept_the_service_url_forms() -> None:
    (container,) = mlflow_service()["template"][0]["containers"]
    (hosts,) = [
        e["value"].strip('"') for e in container["env"] if e["name"].strip('"') == "MLFLOW_SERVER_ALLOWED_HOSTS"
    ]
    argv, _ = serve.server_command({**serve_env_for_check(), "MLFLOW_SERVER_ALLOWED_HOSTS": hosts})
    allowed = argv[-1].split(",")

    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(allowed, RUN_APP_HOST)
    assert is_allowed_host_header(allowed, "mlflow-123456789012.europe-west1.run.app")
    assert not is_allowed_host_header(allowed, "evil.example.com")


def serve_env_for_check() -> dict[str, str]:
    return {name: str(SERVE) for name in serve.REQUIRED}  # any value; the auth config path must be a file


def test_mlflow_keeps_one_instance_warm() -> None:
    (scaling,) = mlflow_service()["template"][0]["scaling"]

    assert scaling["min_instance_count"] >= 1
