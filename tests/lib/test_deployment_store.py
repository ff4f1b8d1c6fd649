"""Where the deployment document lives: DEPLOYMENTS_DATABASE names a Firestore database of its own (the emulator
holds several), apart from the predictions' FIRESTORE_DATABASE."""

from __future__ import annotations

import uuid

import pytest

from sentiment_core.deployment_store import DeploymentStore, StateSettings, deployments_client, firestore_client
from sentiment_core.deployments import Decision, DeploymentState, Desired
from tests.support import PROJECT


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("(default)", "(default)")),
        ({"DEPLOYMENTS_DATABASE": "deployments"}, ("(default)", "deployments")),
        ({"FIRESTORE_DATABASE": "main", "DEPLOYMENTS_DATABASE": "deployments"}, ("main", "deployments")),
    ],
    ids=["one-database-by-default", "deployments-apart", "both-named"],
)
def test_state_settings_deployments_database_is_its_own_setting(env: dict, expected: tuple[str, str]) -> None:
    settings = StateSettings.from_env({"GOOGLE_CLOUD_PROJECT": "p", **env})

    assert (settings.database, settings.deployments_database) == expected


def test_deployment_store_on_the_deployments_database_is_out_of_the_main_databases_reach(
    firestore_emulator, monkeypatch
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.url)
    settings = StateSettings(PROJECT, "(default)", f"m-{uuid.uuid4().hex[:8]}", deployments_database="deployments")
    # A generous bound: a fresh emulator's first writes are slow on a busy machine.
    store = DeploymentStore(deployments_client(settings), settings.model_name, timeout_s=30)
    wanted = DeploymentState(desired=Desired("3", "run-3", "alias"))

    store.apply(lambda state, now: Decision("set", wanted))

    main = DeploymentStore(firestore_client(settings), settings.model_name, timeout_s=30)
    assert main.read().state == DeploymentState()  # nothing in the predictions' database
    assert store.read().state == wanted
