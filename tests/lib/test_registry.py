"""The REST registry client against a real MLflow server: alias first, legacy stage as the fallback."""

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from localdev.services import free_port
from sentiment_core.registry import RegistryClient, RegistryError
from tests.support import ScriptedServer


@pytest.fixture
def registry(mlflow_server) -> tuple[MlflowClient, str]:
    """A fresh registered model with three versions, none promoted."""
    mlflow.set_tracking_uri(mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    name = f"registry-test-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"exp-{name}")
    for _ in range(3):
        run = client.create_run(experiment)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return client, name


def to_production_stage(client: MlflowClient, name: str, version: str) -> None:
    """The legacy workflow, which MLflow still serves and warns about."""
    with pytest.warns(FutureWarning, match="stages"):
        client.transition_model_version_stage(name, version, "Production", archive_existing_versions=False)


def test_production_version_none_when_nothing_is_promoted(mlflow_server, registry) -> None:
    _, name = registry

    assert RegistryClient(mlflow_server.url).production_version(name) is None


def test_production_version_follows_the_alias(mlflow_server, registry) -> None:
    client, name = registry
    client.set_registered_model_alias(name, "production", "2")

    found = RegistryClient(mlflow_server.url).production_version(name)

    assert (found.version, found.chosen_by) == ("2", "alias")
    assert found.run_id == client.get_model_version(name, "2").run_id


def test_production_version_says_a_promotion_was_automatic_only_when_the_version_is_tagged_so(
    mlflow_server, registry
) -> None:
    client, name = registry
    client.set_registered_model_alias(name, "production", "2")
    registry_client = RegistryClient(mlflow_server.url)
    by_a_person = registry_client.production_version(name)

    client.set_model_version_tag(name, "2", "promotion", "automatic")
    by_training = registry_client.production_version(name)

    assert (by_a_person.promotion, by_training.promotion) == (None, "automatic")


def test_production_version_falls_back_to_the_legacy_stage(mlflow_server, registry) -> None:
    client, name = registry
    to_production_stage(client, name, "1")
    to_production_stage(client, name, "3")

    found = RegistryClient(mlflow_server.url).production_version(name)

    assert (found.version, found.chosen_by) == ("3", "stage")


def test_production_version_alias_wins_over_stage(mlflow_server, registry) -> None:
    client, name = registry
    to_production_stage(client, name, "3")
    client.set_registered_model_alias(name, "production", "1")

    assert RegistryClient(mlflow_server.url).production_version(name).version == "1"

    client.delete_registered_model_alias(name, "production")
    assert RegistryClient(mlflow_server.url).production_version(name).version == "3"


def test_production_version_unknown_model_is_none(mlflow_server) -> None:
    assert RegistryClient(mlflow_server.url).production_version("no-such-model") is None


def test_set_alias_moves_the_alias_and_is_idempotent(mlflow_server, registry) -> None:
    client, name = registry
    client.set_registered_model_alias(name, "production", "3")
    registry_client = RegistryClient(mlflow_server.url)

    registry_client.set_alias(name, "production", "2")
    registry_client.set_alias(name, "production", "2")

    assert client.get_model_version_by_alias(name, "production").version == "2"
    assert registry_client.production_version(name).version == "2"


def test_set_version_tag_sets_and_overwrites_the_tag(mlflow_server, registry) -> None:
    client, name = registry
    registry_client = RegistryClient(mlflow_server.url)

    registry_client.set_version_tag(name, "3", "deployment_status", "serving")
    registry_client.set_version_tag(name, "3", "deployment_status", "rolled_back")
    registry_client.set_version_tag(name, "3", "deployment_reason", "feedback_worse")

    tags = client.get_model_version(name, "3").tags
    assert (tags["deployment_status"], tags["deployment_reason"]) == ("rolled_back", "feedback_worse")
    assert "deployment_status" not in client.get_model_version(name, "2").tags


@pytest.mark.parametrize(
    "write",
    [
        lambda client, name: client.set_alias(name, "production", "99"),
        lambda client, name: client.set_alias("no-such-model", "production", "1"),
        lambda client, name: client.set_version_tag(name, "99", "deployment_status", "retired"),
        lambda client, name: client.set_version_tag("no-such-model", "1", "deployment_status", "retired"),
    ],
    ids=["alias-unknown-version", "alias-unknown-model", "tag-unknown-version", "tag-unknown-model"],
)
def test_registry_write_to_a_missing_model_or_version_raises_registry_error(mlflow_server, registry, write) -> None:
    client, name = registry

    with pytest.raises(RegistryError, match=r"cannot set|HTTP 4\d\d"):
        write(RegistryClient(mlflow_server.url), name)

    assert client.get_registered_model(name).aliases == {}


def test_registry_unreachable_raises_registry_error_quickly() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", timeout=2)

    with pytest.raises(RegistryError, match="alias"):
        client.production_version("yelp-sentiment")


def test_registry_client_rejects_non_http_uris() -> None:
    with pytest.raises(ValueError, match="http"):
        RegistryClient("sqlite:///mlflow.db")


def test_registry_client_sends_basic_auth(mlflow_server) -> None:
    """The header is well formed: a server without auth ignores it and still answers."""
    client = RegistryClient(mlflow_server.url, username="admin", password="secret")

    assert client.production_version("no-such-model") is None


def test_shared_package_imports_without_torch_or_mlflow() -> None:
    code = (
        "import sys, sentiment_core.contract, sentiment_core.manifest, sentiment_core.registry\n"
        "heavy = {'torch', 'mlflow', 'onnx', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )

    subprocess.run([sys.executable, "-c", code], check=True)


ALIAS_ANSWER = b'{"model_version": {"name": "m", "version": "4", "run_id": "r", "source": "s"}}'


def test_registry_server_error_is_retried_once_then_answers() -> None:
    server = ScriptedServer([(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', 0), (200, ALIAS_ANSWER, 0)])
    try:
        version = RegistryClient(server.url, timeout=2, backoff_s=0.01).version_by_alias("m", "production")
    finally:
        server.close()

    assert (version.version, server.requests) == ("4", 2)


def test_registry_retries_are_bounded() -> None:
    server = ScriptedServer([(500, b"{}", 0)])
    try:
        with pytest.raises(RegistryError, match="HTTP 500"):
            RegistryClient(server.url, timeout=2, retries=2, backoff_s=0.01).version_by_alias("m", "production")
    finally:
        server.close()

    assert server.requests == 3


def test_registry_write_answered_5xx_is_retried_once_with_the_same_body() -> None:
    server = ScriptedServer([(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', 0), (200, b"{}", 0)])
    try:
        RegistryClient(server.url, timeout=2, backoff_s=0.01).set_alias("m", "production", "3")
    finally:
        server.close()

    assert server.paths == ["/api/2.0/mlflow/registered-models/alias"] * 2
    assert [json.loads(body) for body in server.bodies] == [{"name": "m", "alias": "production", "version": "3"}] * 2


def test_registry_write_forbidden_raises_registry_error_without_retry() -> None:
    """What a watcher identity without EDIT on the model gets from MLflow's basic auth."""
    server = ScriptedServer([(403, b'{"error_code": "PERMISSION_DENIED", "message": "Permission denied"}', 0)])
    try:
        with pytest.raises(RegistryError, match="HTTP 403: Permission denied"):
            RegistryClient(server.url, timeout=2).set_version_tag("m", "3", "deployment_status", "retired")
    finally:
        server.close()

    assert server.requests == 1


def test_registry_timeout_is_not_retried() -> None:
    """A hung server has already spent the budget: one attempt, then RegistryError."""
    server = ScriptedServer([(200, ALIAS_ANSWER, 1.0)])
    try:
        with pytest.raises(RegistryError, match=r"no answer within 0\.3 s"):
            RegistryClient(server.url, timeout=0.3, backoff_s=0.01).version_by_alias("m", "production")
    finally:
        server.close()

    assert server.requests == 1


def test_registry_behind_cloud_run_iam_sends_an_identity_token_beside_basic_auth() -> None:
    from sentiment_core.registry import IdTokenSource

    metadata = ScriptedServer([(200, b"header.payload.signature", 0)])
    mlflow = ScriptedServer([(200, ALIAS_ANSWER, 0)])
    try:
        tokens = IdTokenSource(mlflow.url, url=f"{metadata.url}/identity")
        client = RegistryClient(mlflow.url, username="watcher", password="pw", id_token=tokens, timeout=2)
        client.version_by_alias("m", "production")
        client.version_by_alias("m", "production")
    finally:
        metadata.close()
        mlflow.close()

    assert mlflow.headers[0]["X-Serverless-Authorization"] == "Bearer header.payload.signature"
    assert mlflow.headers[0]["Authorization"].startswith("Basic ")
    assert metadata.requests == 1  # reused, not fetched per call
    assert metadata.headers[0]["Metadata-Flavor"] == "Google"
    assert "audience=http" in metadata.paths[0]


def test_identity_token_unavailable_is_a_registry_error() -> None:
    from sentiment_core.registry import IdTokenSource

    metadata = ScriptedServer([(404, b"no such service account", 0)])
    try:
        with pytest.raises(RegistryError, match="identity token"):
            IdTokenSource("https://mlflow.example", url=f"{metadata.url}/identity")()
    finally:
        metadata.close()


def test_run_with_tag_finds_only_a_finished_run_of_that_experiment_by_default(mlflow_server) -> None:
    client = MlflowClient(mlflow_server.url)
    experiment = f"retrain-{uuid.uuid4().hex[:8]}"
    other = client.create_experiment(f"{experiment}-other")
    experiment_id = client.create_experiment(experiment)
    running = client.create_run(experiment_id, tags={"training_fingerprint": "aaa"})
    failed = client.create_run(experiment_id, tags={"training_fingerprint": "bbb"})
    client.set_terminated(failed.info.run_id, "FAILED")
    finished = client.create_run(experiment_id, tags={"training_fingerprint": "ccc"})
    client.set_terminated(finished.info.run_id)
    elsewhere = client.create_run(other, tags={"training_fingerprint": "ddd"})
    client.set_terminated(elsewhere.info.run_id)
    registry = RegistryClient(mlflow_server.url)

    found = {fp: registry.run_with_tag(experiment, "training_fingerprint", fp * 3) for fp in "abcd"}

    assert found == {"a": None, "b": None, "c": finished.info.run_id, "d": None}
    with pytest.raises(ValueError, match="not searchable"):  # MLflow's filter cannot quote it
        registry.run_with_tag(experiment, "training_fingerprint", "x'y")
    assert running.info.status == "RUNNING"


def test_run_with_tag_of_a_missing_experiment_is_none(mlflow_server) -> None:
    registry = RegistryClient(mlflow_server.url)

    assert registry.run_with_tag(f"never-{uuid.uuid4().hex}", "training_fingerprint", "abc") is None


def test_run_with_tag_finds_a_running_run_only_when_it_started_after_the_given_time(mlflow_server) -> None:
    client = MlflowClient(mlflow_server.url)
    experiment = f"retrain-{uuid.uuid4().hex[:8]}"
    running = client.create_run(client.create_experiment(experiment), tags={"training_fingerprint": "abc"})
    registry = RegistryClient(mlflow_server.url)
    started = datetime.fromtimestamp(running.info.start_time / 1000, UTC)

    recent = registry.run_with_tag(experiment, "training_fingerprint", "abc", "RUNNING", started - timedelta(hours=1))
    stale = registry.run_with_tag(experiment, "training_fingerprint", "abc", "RUNNING", started + timedelta(seconds=1))

    assert (recent, stale) == (running.info.run_id, None)
