"""Entry point `predict` (HTTP, public). Wiring only: logic lives in predict_service.py and predict_model.py."""

from __future__ import annotations

import functools
import logging

import flask
import functions_framework
import predict_model
import predict_service

from sentiment_core import http, logs, web

logs.configure()
http.register_error_handlers(functions_framework.errorhandler)  # JSON, never HTML, for every error
SETTINGS = predict_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
CORS = http.Cors.from_setting(SETTINGS.public.allowed_origins)


@functools.cache
def _loaded_model() -> predict_model.Model:
    """One onnxruntime session per instance, created on first use (a failure is retried on the next request)."""
    model = predict_model.load(SETTINGS.model_uri, SETTINGS.model_sha256)
    logging.getLogger("sentiment").info("model loaded", extra={"model_version": model.manifest.model_version})
    return model


def _model() -> predict_model.Model:
    try:
        return _loaded_model()
    except predict_model.ModelError as exc:
        logging.getLogger("sentiment").error("model unavailable: %s", exc)
        raise http.ApiError(
            503,
            "model_unavailable",
            "the model is not available; nothing was stored, retrying is safe",
            {"Retry-After": "30"},
        ) from exc


@functools.cache
def _store():
    """predict only writes: the REST writer spares every cold start the Firestore client's import."""
    return web.rest_writer(SETTINGS.public)


ROUTES = {
    "/": {
        "POST": lambda r: predict_service.handle_predict(
            r,
            _model(),
            _store,
            SETTINGS.public.feedback_token_secret,
            retention_days=SETTINGS.retention_days,
            evidence=SETTINGS.public.evidence,
        )
    },
    "/healthz": {"GET": lambda r: predict_service.handle_healthz(_model())},
}


@functions_framework.http
def predict(request: flask.Request) -> flask.Response:
    version = _loaded_model().manifest.model_version if _loaded_model.cache_info().currsize else None
    return web.serve(request, ROUTES, CORS, model_version=version)
