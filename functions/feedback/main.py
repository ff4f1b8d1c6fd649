"""Entry point `feedback` (HTTP, public). Wiring only: logic lives in feedback_service.py."""

from __future__ import annotations

import dataclasses
import functools

import feedback_service
import flask
import functions_framework

from sentiment_core import http, logs, web
from sentiment_core.deployment_store import DeploymentStore

logs.configure()
http.register_error_handlers(functions_framework.errorhandler)  # JSON, never HTML, for every error
SETTINGS = feedback_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
CORS = http.Cors.from_setting(SETTINGS.public.allowed_origins)


@functools.cache
def _db():
    """One Firestore client per instance, created on first use; the store and the deployment document share it."""
    return web.firestore_client(SETTINGS.public)


@functools.cache
def _store():
    return web.firestore_store(SETTINGS.public, _db())


@functools.cache
def _deployments() -> DeploymentStore:
    """Read only (GET /statistics): in the cloud feedback may only view the deployments database (iam.tf)."""
    public = SETTINGS.public
    same = SETTINGS.deployments_database == public.database
    db = _db() if same else web.firestore_client(dataclasses.replace(public, database=SETTINGS.deployments_database))
    return DeploymentStore(db, SETTINGS.model_name, public.firestore_timeout_s)


# Turned off (the default), the route still answers, as a JSON 404 that says why.
LIST_PREDICTIONS = (
    (lambda r: feedback_service.handle_predictions(r, _store))
    if SETTINGS.predictions_listing
    else feedback_service.listing_disabled
)

ROUTES = {
    "/": {
        "POST": lambda r: feedback_service.handle_feedback(
            r, _store, SETTINGS.public.feedback_token_secret, SETTINGS.public.evidence
        )
    },
    "/statistics": {"GET": lambda r: feedback_service.handle_statistics(r, _store, _deployments)},
    "/predictions": {"GET": LIST_PREDICTIONS},
    "/monitoring": {
        "GET": lambda r: feedback_service.handle_monitoring(r, _db, SETTINGS.drift, SETTINGS.public.firestore_timeout_s)
    },
}


@functions_framework.http
def feedback(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, CORS)
