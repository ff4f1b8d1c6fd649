"""Entry point `on_production_changed` (Pub/Sub CloudEvent from the push subscription): the redeploy of `predict`.

Wiring only: the decisions are redeploy_decisions.py, their effects redeploy.py, the settings redeploy_service.py.
"""

from __future__ import annotations

import functools

import functions_framework
import redeploy_service
from cloudevents.http import CloudEvent

from sentiment_core import logs

logs.configure()
SETTINGS = redeploy_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic


@functools.cache
def _redeployer():
    """Created on the first delivery, once per instance: the Firestore and Cloud Run clients cost seconds."""
    from redeploy import Redeployer
    from redeploy_decisions import Policy

    from sentiment_core.deployment_store import DeploymentStore, deployments_client

    store = DeploymentStore(deployments_client(SETTINGS.state), SETTINGS.state.model_name)
    return Redeployer(store, SETTINGS.make_deployer(), Policy(SETTINGS.state.model_name, SETTINGS.serving_bucket))


@functions_framework.cloud_event
def on_production_changed(event: CloudEvent) -> None:
    redeploy_service.handle(event, _redeployer)
