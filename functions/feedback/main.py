"""Entry point `feedback` (HTTP, public). Wiring only: logic lives in feedback_service.py."""

from __future__ import annotations

import functools

import feedback_service
import flask
import functions_framework

from sentiment_core import http, logs, web

logs.configure()
SETTINGS = web.PublicSettings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
CORS = http.Cors.from_setting(SETTINGS.allowed_origins)


@functools.cache
def _store():
    """One Firestore client per instance, created on first use."""
    return web.firestore_store(SETTINGS)


ROUTES = {
    "/": {"POST": lambda r: feedback_service.handle_feedback(r, _store, SETTINGS.feedback_token_secret)},
    "/statistics": {"GET": lambda r: feedback_service.handle_statistics(r, _store)},
    "/predictions": {"GET": lambda r: feedback_service.handle_predictions(r, _store)},
}


@functions_framework.http
def feedback(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, CORS)
