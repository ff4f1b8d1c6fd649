"""The REST registry client against a real MLflow server: alias first, legacy stage as the fallback."""

import subprocess
import sys
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from localdev.services import free_port
from sentiment_core.registry import RegistryClient, RegistryError


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
