"""Entry point `registry_watcher` (HTTP): the reconcile tick `POST /`, MLflow's `POST /webhook`, `GET /status`,
a person's `POST /rollout`.

Wiring only: the decisions are watcher_decisions.py, their effects reconcile.py, the HTTP handling
watcher_service.py. The redeploy that consumes the events is its own unit (functions/redeploy).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import flask
import functions_framework
import watcher_service

from sentiment_core import http, logs, web
from sentiment_core.deployment_store import DeploymentStore, deployments_client, firestore_client

if TYPE_CHECKING:
    from drift_watch import DriftWatch
    from reconcile import Reconciler

logs.configure()
http.register_error_handlers(functions_framework.errorhandler)  # JSON, never HTML, for every error
SETTINGS = watcher_service.Settings.from_env()  # fails at start-up: a misconfigured revision never takes traffic
NO_CORS = http.Cors.from_setting("")  # internal: no browser calls it


@functools.cache
def _db():
    return firestore_client(SETTINGS.state)


@functools.cache
def _store() -> DeploymentStore:
    """The deployment document, in its own database (DEPLOYMENTS_DATABASE): the same client when it is _db's."""
    state = SETTINGS.state
    same = state.deployments_database == state.database
    return DeploymentStore(_db() if same else deployments_client(state), state.model_name)


@functools.cache
def _reconciler() -> Reconciler:
    from evaluation import Evaluator
    from publisher import PubSubPublisher
    from reconcile import Reconciler
    from staging import GcsStager
    from watcher_decisions import Policy

    from sentiment_core.store import save_reference, window_evidence

    return Reconciler(
        registry=SETTINGS.registry(),
        store=_store(),
        stager=GcsStager(SETTINGS.serving_bucket),
        publisher=PubSubPublisher(SETTINGS.topic),
        policy=Policy(SETTINGS.state.model_name, rollout=SETTINGS.rollout, evaluation=SETTINGS.evaluation),
        min_val_accuracy=SETTINGS.min_val_accuracy,
        max_calibration_error=SETTINGS.max_calibration_error,
        min_behaviour_pass_rate=SETTINGS.min_behaviour_pass_rate,
        counts=functools.partial(window_evidence, _db()),
        save_reference=functools.partial(save_reference, _db()),
        evaluator=Evaluator(SETTINGS.eval_set_uri),  # read at the first candidate, not at start-up
    )


@functools.cache
def _drift_watch() -> DriftWatch:
    from drift_watch import DriftWatch

    from sentiment_core.deployment_store import utc_now

    return DriftWatch(_db(), SETTINGS.drift, utc_now)


ROUTES = {
    "/": {"POST": lambda r: watcher_service.handle_tick(r, _reconciler, _drift_watch, _store)},
    "/webhook": {
        "POST": lambda r: watcher_service.handle_webhook(
            r, _reconciler, SETTINGS.webhook_secret, _db, SETTINGS.state.model_name
        )
    },
    "/status": {"GET": lambda r: watcher_service.handle_status(_store())},
    "/rollout": {"POST": lambda r: watcher_service.handle_rollout(r, _store(), SETTINGS.state.model_name)},
}
if SETTINGS.webhook_receiver_only:
    # The webhook receiver's deployment may be invoked by anyone (MLflow sends no Google identity): it serves
    # the HMAC-checked route only, never the tick, the status or a person's rollout command.
    ROUTES = {"/webhook": ROUTES["/webhook"]}


@functions_framework.http
def registry_watcher(request: flask.Request) -> flask.Response:
    return web.serve(request, ROUTES, NO_CORS)
