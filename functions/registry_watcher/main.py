"""Entry points `registry_watcher` (HTTP: tick, webhook, status) and `on_production_changed` (Pub/Sub CloudEvent).

Wiring only: the tick is reconcile.py, the redeploy redeploy.py, the HTTP handling watcher_service.py.
"""

from __future__ import annotations

import functools

import flask
import functions_framework
import redeploy
import watcher_service
from cloudevents.http import CloudEvent
from events import InvalidEvent, from_pubsub_message

from sentiment_core import http, logs, web

logs.configure()
SETTINGS = watcher_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
NO_CORS = http.Cors.from_setting("")  # internal: no browser calls it


@functools.cache
def _db():
    from google.cloud import firestore

    return firestore.Client(project=SETTINGS.project, database=SETTINGS.database)


@functools.cache
def _state():
    from state import StateStore

    return StateStore(_db(), SETTINGS.model_name)


@functools.cache
def _reconciler():
    from events import PubSubPublisher
    from reconcile import Reconciler
    from staging import GcsStager

    return Reconciler(
        registry=SETTINGS.registry(),
        state=_state(),
        stager=GcsStager(SETTINGS.serving_bucket),
        publisher=PubSubPublisher(SETTINGS.topic),
        model_name=SETTINGS.model_name,
        min_val_accuracy=SETTINGS.min_val_accuracy,
    )


@functools.cache
def _redeployer() -> redeploy.Redeployer:
    from deployers import make_deployer

    return redeploy.Redeployer(_state(), make_deployer(SETTINGS), SETTINGS.model_name)


ROUTES = {
    "/": {"POST": lambda r: watcher_service.handle_tick(r, _reconciler)},
    "/webhook": {
        "POST": lambda r: watcher_service.handle_webhook(
            r, _reconciler, SETTINGS.webhook_secret, _db, SETTINGS.model_name
        )
    },
    "/status": {"GET": lambda r: watcher_service.handle_status(_state())},
}


@functions_framework.http
def registry_watcher(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, NO_CORS)


@functions_framework.cloud_event
def on_production_changed(event: CloudEvent) -> None:
    try:
        change = from_pubsub_message((event.get_data() or {}).get("message"))
    except (InvalidEvent, AttributeError) as exc:
        watcher_service.log_unprocessable(event, exc)
        raise
    _redeployer().handle(change)
