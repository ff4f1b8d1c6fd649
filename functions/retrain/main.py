"""Entry point `retrain_check` (HTTP): one retrain check `POST /` (the scheduler), `GET /status`.

Wiring only: the decisions are retrain_decisions.py, their effects retrain.py, the feedback export
feedback_export.py, the job runners runners.py, the settings and HTTP handling retrain_service.py.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import flask
import functions_framework
import retrain_service

from sentiment_core import http, logs, web
from sentiment_core.deployment_store import StateDocument, deployments_client, firestore_client

if TYPE_CHECKING:
    from retrain import Retrainer

logs.configure()
http.register_error_handlers(functions_framework.errorhandler)  # JSON, never HTML, for every error
SETTINGS = retrain_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
NO_CORS = http.Cors.from_setting("")  # internal: no browser calls it


@functools.cache
def _store() -> StateDocument:
    """`retraining/{model}` in the deployments database, beside the deployment document."""
    return retrain_service.state_document(deployments_client(SETTINGS.state), SETTINGS.state.model_name)


@functools.cache
def _retrainer() -> Retrainer:
    from feedback_export import FeedbackExporter
    from google.cloud import storage
    from retrain import Retrainer

    from sentiment_core.training_data import list_training_data

    bucket = storage.Client(project=SETTINGS.state.project)
    exporter = FeedbackExporter(firestore_client(SETTINGS.state), bucket, SETTINGS.data, _store(), SETTINGS.export)
    return Retrainer(
        store=_store(),
        registry=SETTINGS.registry.client(),
        experiment=SETTINGS.experiment,
        runner=SETTINGS.make_runner(),
        list_data=functools.partial(list_training_data, bucket, SETTINGS.data),
        training=SETTINGS.training,
        policy=SETTINGS.policy,
        model_name=SETTINGS.state.model_name,
        auto_promote=SETTINGS.auto_promote,
        exporter=exporter,
    )


ROUTES = {
    "/": {"POST": lambda r: retrain_service.handle_tick(r, _retrainer)},
    "/status": {"GET": lambda r: retrain_service.handle_status(_store())},
}


@functions_framework.http
def retrain_check(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, NO_CORS)
