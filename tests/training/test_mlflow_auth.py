"""The training job's MLflow client behind Cloud Run IAM: the ID token goes in X-Serverless-Authorization, beside
MLflow's basic auth, on requests mlflow itself sends (the plugin is found through the project's entry point)."""

from __future__ import annotations

import base64
import json
from importlib.metadata import entry_points

import pytest
from mlflow.tracking import MlflowClient

from tests.support import ScriptedServer
from training.mlflow_auth import CloudRunIdentityHeader

NO_EXPERIMENT = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no experiment"}).encode()
TOKEN = b"header.payload.signature"


def test_mlflow_finds_the_identity_header_plugin_through_the_projects_entry_point() -> None:
    found = [e for e in entry_points(group="mlflow.request_header_provider") if e.name == "cloud_run_identity"]

    assert [e.load() for e in found] == [CloudRunIdentityHeader]


def test_mlflow_requests_carry_the_identity_token_beside_basic_auth_when_an_audience_is_set(monkeypatch) -> None:
    metadata, server = ScriptedServer([(200, TOKEN, 0)]), ScriptedServer([(404, NO_EXPERIMENT, 0)])
    try:
        monkeypatch.setenv("MLFLOW_IAM_AUDIENCE", server.url)
        monkeypatch.setenv("MLFLOW_IAM_METADATA_URL", f"{metadata.url}/identity")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        client = MlflowClient(server.url)

        assert client.get_experiment_by_name("yelp-sentiment") is None
        assert client.get_experiment_by_name("other") is None
    finally:
        metadata.close()
        server.close()

    sent = server.headers[-1]
    assert sent["X-Serverless-Authorization"] == f"Bearer {TOKEN.decode()}"
    assert sent["Authorization"] == "Basic " + base64.b64encode(b"trainer:secret").decode()
    assert metadata.requests == 1  # the token is reused, not fetched per request
    assert f"audience={server.url}".replace(":", "%3A").replace("/", "%2F") in metadata.paths[0]


@pytest.mark.parametrize("audience", ["", "   "])
def test_without_an_audience_mlflow_sends_no_identity_header(monkeypatch, audience: str) -> None:
    server = ScriptedServer([(404, NO_EXPERIMENT, 0)])
    try:
        monkeypatch.setenv("MLFLOW_IAM_AUDIENCE", audience)
        assert MlflowClient(server.url).get_experiment_by_name("yelp-sentiment") is None
    finally:
        server.close()

    assert "X-Serverless-Authorization" not in server.headers[-1]
