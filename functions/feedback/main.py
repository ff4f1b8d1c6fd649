"""Entry point `feedback` (HTTP, public). Wiring only: logic lives in feedback_service.py."""

from __future__ import annotations

import functools

import feedback_service
import flask
import functions_framework

from sentiment_core import http, logs, web
from sentiment_core.deployment_store import DeploymentStore

logs.configure()
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
    return DeploymentStore(_db(), SETTINGS.model_name, SETTINGS.public.firestore_timeout_s)


ROUTES = {
    "/": {
        "POST": lambda r: feedback_service.handle_feedback(
            r, _store, SETTINGS.public.feedback_token_secret, SETTINGS.public.evidence
        )
    },
    "/statistics": {"GET": lambda r: feedback_service.handle_statistics(r, _store, _deployments)},
    "/predictions": {"GET": lambda r: feedback_service.handle_predictions(r, _store)},
    "/monitoring": {
        "GET": lambda r: feedback_service.handle_monitoring(r, _db, SETTINGS.drift, SETTINGS.public.firestore_timeout_s)
    },
}


@functions_framework.http
def feedback(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, CORS)
