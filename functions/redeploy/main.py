"""Entry point `on_production_changed` (Pub/Sub CloudEvent from the push subscription): the redeploy of `predict`.

Wiring only: the decisions are redeploy_decisions.py, their effects redeploy.py, the settings redeploy_service.py.
"""

from __future__ import annotations

import functools

import flask
import functions_framework
import redeploy_service
from cloudevents.http import CloudEvent

from sentiment_core import http, logs
from sentiment_core.events import InvalidEvent

logs.configure()
http.register_error_handlers(functions_framework.errorhandler)  # JSON, never HTML, for every error


@functions_framework.errorhandler(InvalidEvent)
def _invalid_event(error: InvalidEvent) -> flask.Response:
    """A delivery that is no event of this system: a 4xx, which Pub/Sub retries and then dead-letters as before."""
    return http.error_response(http.ApiError(400, "invalid_event", str(error)))


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
