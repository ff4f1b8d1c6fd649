"""registry_watcher's settings and request handling; main.py wires these to functions-framework."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import evaluation
import flask
import gate
import webhook
from drift_watch import DriftWatch
from reconcile import PublishError, Reconciler
from staging import StagingError
from watcher_decisions import (
    DEFAULT_MAX_EVAL_REGRESSION,
    DEFAULT_MIN_EVAL_ACCURACY,
    Action,
    Commanded,
    EvalLimits,
    Policy,
    decide,
)

from sentiment_core import config, http, logs
from sentiment_core.contract import PRODUCTION_ALIAS
from sentiment_core.deployment_store import DeploymentStore, StateSettings, StateUnavailable, utc_now
from sentiment_core.deployments import Rollout
from sentiment_core.events import TOPIC
from sentiment_core.monitoring import DriftSettings
from sentiment_core.records import StoreUnavailable
from sentiment_core.registry import RegistryClient, RegistryError, RegistrySettings
from sentiment_core.rollout import Command, Reason, RolloutAction, RolloutSettings

logger = logging.getLogger("sentiment.watcher")

DELIVERIES = "webhook_deliveries"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every variable Terraform (or the local stack) sets on the watcher; all parsed at start-up.

    Only what the watcher uses: the deployment document, MLflow, the bucket, the topic and its evaluation set.
    Nothing of Cloud Run: the redeploy (functions/redeploy) moves predict.
    """

    state: StateSettings
    mlflow: RegistrySettings
    webhook_secret: bytes
    serving_bucket: str
    topic: str
    min_val_accuracy: float
    # The watcher's own labelled set (JSON lines {"text", "label"}), where no training identity can write.
    eval_set_uri: str
    evaluation: EvalLimits = dataclasses.field(default_factory=EvalLimits)
    max_calibration_error: float = gate.DEFAULT_MAX_CALIBRATION_ERROR
    min_behaviour_pass_rate: float = gate.DEFAULT_MIN_BEHAVIOUR_PASS_RATE
    rollout: RolloutSettings = dataclasses.field(default_factory=RolloutSettings)
    drift: DriftSettings = dataclasses.field(default_factory=DriftSettings)
    webhook_receiver_only: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        state = StateSettings.from_env(env)
        topic = config.optional("PUBSUB_TOPIC", TOPIC, env)
        return cls(
            state=state,
            mlflow=RegistrySettings.from_env(env),
            webhook_secret=config.secret("MLFLOW_WEBHOOK_SECRET", env),
            serving_bucket=config.required("SERVING_BUCKET", env),
            topic=topic if topic.startswith("projects/") else f"projects/{state.project}/topics/{topic}",
            min_val_accuracy=config.number("MIN_VALIDATION_ACCURACY", 0.8, 0.0, 1.0, env),
            eval_set_uri=_eval_set_uri(config.required("EVAL_SET_URI", env)),
            evaluation=EvalLimits(
                min_accuracy=config.number("MIN_EVAL_ACCURACY", DEFAULT_MIN_EVAL_ACCURACY, 0.0, 1.0, env),
                max_regression=config.number("MAX_EVAL_REGRESSION", DEFAULT_MAX_EVAL_REGRESSION, 0.0, 1.0, env),
            ),
            max_calibration_error=config.number(
                "MAX_CALIBRATION_ERROR", gate.DEFAULT_MAX_CALIBRATION_ERROR, 0.0, 1.0, env
            ),
            min_behaviour_pass_rate=config.number(
                "MIN_BEHAVIOUR_PASS_RATE", gate.DEFAULT_MIN_BEHAVIOUR_PASS_RATE, 0.0, 1.0, env
            ),
            rollout=RolloutSettings.from_env(env),
            drift=DriftSettings.from_env(env),
            webhook_receiver_only=_true_or_false(
                "WEBHOOK_RECEIVER_ONLY", config.optional("WEBHOOK_RECEIVER_ONLY", "false", env)
            ),
        )

    def registry(self) -> RegistryClient:
        return self.mlflow.client()


def _eval_set_uri(value: str) -> str:
    try:
        return evaluation.check_uri(value)
    except ValueError as exc:
        raise config.ConfigError(str(exc)) from exc


def _true_or_false(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise config.ConfigError(f"{name} must be true or false, got {value!r}")
    return value == "true"


def _unavailable(code: str, exc: Exception) -> http.ApiError:
    return http.unavailable(code, exc, logger)


def run_tick(reconciler: Reconciler, trigger: str, retry_refused: str | None = None) -> dict[str, Any]:
    """One reconcile, its failures mapped to 503s with a stable code (nothing was published)."""
    try:
        result = reconciler.tick(trigger, retry_refused)
    except RegistryError as exc:
        raise _unavailable("registry_unavailable", exc) from exc
    except StateUnavailable as exc:
        raise _unavailable("state_unavailable", exc) from exc
    except PublishError as exc:
        raise _unavailable("publish_failed", exc) from exc
    except StagingError as exc:
        raise _unavailable("staging_failed", exc) from exc
    except evaluation.EvaluationUnavailable as exc:
        raise _unavailable("evaluation_unavailable", exc) from exc
    logger.info("tick (%s): %s", trigger, result.action, extra={"trigger": trigger, **result.to_api()})
    return result.to_api()


def handle_tick(
    request: flask.Request,
    reconciler: Callable[[], Reconciler],
    drift: Callable[[], DriftWatch] | None = None,
    store: Callable[[], DeploymentStore] | None = None,
) -> flask.Response:
    """POST /: Cloud Scheduler, `gcloud functions call` or a person. Optional body {"retry_refused": "<version>"}.

    After the reconcile, the drift evaluation of the versions in service (with `drift` and `store`): its
    answer is the tick's `monitoring` field; its failure is logged and reported there, never failing the tick.
    """
    retry = None
    if request.content_length or request.headers.get("Transfer-Encoding"):
        body = http.read_json_object(request) if request.mimetype == "application/json" else {}
        http.check_fields(body, {}, {"retry_refused": str})
        retry = body.get("retry_refused")
    answer = run_tick(reconciler(), "tick", retry)
    if drift is not None and store is not None:
        answer["monitoring"] = run_drift_check(drift(), store())
    return http.json_response(answer)


def run_drift_check(watch: DriftWatch, store: DeploymentStore) -> dict[str, Any]:
    """The drift evaluation of the versions in service, when due; a failure is logged (alerted on), not raised."""
    try:
        results = watch.check(store.read().state.versions_in_service)
    except (StoreUnavailable, StateUnavailable) as exc:
        logger.error("drift evaluation failed: %s", exc, extra={logs.EVENT_FIELD: logs.MONITORING_FAILED})
        return {"evaluated": False, "error": str(exc)}
    if results is None:
        return {"evaluated": False, "detail": f"evaluated less than {watch.settings.evaluate_every_s:g} s ago"}
    versions = [r.to_api() for r in results]
    return {"evaluated": True, "window_hours": watch.settings.window_hours, "versions": versions}


def handle_webhook(
    request: flask.Request, reconciler: Callable[[], Reconciler], secret: bytes, db: Callable[[], Any], model: str
) -> flask.Response:
    """POST /webhook: a signed MLflow delivery; 401 for anything unsigned, stale or replayed."""
    body = request.stream.read(http.MAX_BODY_BYTES + 1)
    if len(body) > http.MAX_BODY_BYTES:
        raise http.ApiError(413, "body_too_large", f"the body must be at most {http.MAX_BODY_BYTES} bytes")
    try:
        delivery = webhook.verify(request.headers, body, secret)
    except webhook.WebhookRejected as exc:
        logger.warning("webhook rejected: %s", exc)
        raise http.ApiError(401, "invalid_signature", str(exc)) from exc
    record = db().collection(DELIVERIES).document(delivery.delivery_id)
    _claim_delivery(record, delivery)
    try:
        answer = _act_on(delivery, reconciler, model)
    except BaseException:
        record.delete()  # MLflow retries a failed delivery with the same id: let that retry in
        raise
    return http.json_response({"delivery_id": delivery.delivery_id, **answer})


def _claim_delivery(record: Any, delivery: webhook.Delivery) -> None:
    from google.api_core import exceptions as gexc

    try:
        # expires_at: a Firestore TTL policy on this field (Terraform) deletes old delivery ids.
        record.create({"event": delivery.event, "at": utc_now(), "expires_at": utc_now() + timedelta(days=1)})
    except gexc.AlreadyExists as exc:
        logger.warning("webhook replay rejected: delivery %s was already processed", delivery.delivery_id)
        raise http.ApiError(401, "replayed_delivery", "this delivery was already processed") from exc
    except gexc.GoogleAPICallError as exc:
        raise _unavailable("state_unavailable", exc) from exc


def _act_on(delivery: webhook.Delivery, reconciler: Callable[[], Reconciler], model: str) -> dict[str, Any]:
    data = delivery.data
    relevant = delivery.entity == "model_version_alias" and delivery.action in ("created", "deleted")
    if not relevant or data.get("name") != model or data.get("alias") != PRODUCTION_ALIAS:
        return {"action": "ignored", "detail": f"{delivery.event} on {data.get('name')!r} is not a production move"}
    retry = str(data.get("version")) if delivery.action == "created" and data.get("version") is not None else None
    return run_tick(reconciler(), f"webhook:{delivery.event}", retry)


ROLLOUT_TRIGGER = "POST /rollout"


def handle_rollout(request: flask.Request, store: DeploymentStore, model: str) -> flask.Response:
    """POST /rollout {"action": "abort"|"complete"}: recorded for the next tick, 202; 409 with no rollout running."""
    body = http.read_json_object(request)
    http.check_fields(body, {"action": str})
    try:
        command = Command(body["action"])
    except ValueError as exc:
        raise http.bad_request("invalid_action", 'action must be "abort" or "complete"') from exc
    asked = Commanded(command, ROLLOUT_TRIGGER)
    try:
        decision = store.apply(lambda state, now: decide(state, asked, Policy(model), now))
    except StateUnavailable as exc:
        raise _unavailable("state_unavailable", exc) from exc
    if decision.action is Action.NO_ROLLOUT:
        raise http.ApiError(409, "no_rollout", decision.detail)
    if decision.action is Action.ABORT_PENDING:
        raise http.ApiError(409, "abort_pending", decision.detail)
    logger.warning("rollout %s requested: %s", command.value, decision.detail, extra={"trigger": ROLLOUT_TRIGGER})
    answer = {"action": command.value, "detail": decision.detail, "rollout": rollout_status(decision.state.rollout)}
    return http.json_response(http.jsonable(answer), 202)


def handle_status(store: DeploymentStore) -> flask.Response:
    """GET /status: desired, announced and serving versions, a refusal if any, the rollout's candidate live beside
    the serving version (`canary`, with its share), the rollout, the recent history."""
    try:
        state = store.read().state
        history = store.history(limit=20)
    except StateUnavailable as exc:
        raise _unavailable("state_unavailable", exc) from exc
    current = {"canary": None, **state.to_document()}
    fields = ("desired", "target", "serving", "refused", "canary")
    answer = {
        **{name: current[name] for name in fields},
        "pending_event": current["outbox"],
        "rollout": rollout_status(state.rollout),
        "history": history,
    }
    return http.json_response(http.jsonable(answer))


def rollout_status(rollout: Rollout | None) -> dict[str, Any] | None:
    """The `rollout` of /status (docs/architecture.md): None when no rollout was ever recorded.

    evidence: the policy's last decision with the numbers of every check (None before its first decision).
    next_decision: what the next tick does unless the evidence changes: a person's pending command, else the
    reason the last decision held (None when the rollout is over or has not been decided at this step yet).
    """
    if rollout is None:
        return None
    last = rollout.last_decision
    evidence = None
    if last is not None:
        checks = {check.name.value: check.to_document() for check in last.checks}
        evidence = {
            "at": last.at,
            "action": last.action.value,
            "reason": last.reason.value,
            "detail": last.detail,
            "checks": checks,
        }
    return {
        "state": rollout.state.value,
        "stable_version": rollout.stable_version,
        "candidate_version": rollout.candidate_version,
        "candidate_percent": rollout.candidate_percent,
        "step": rollout.step,
        "started_at": rollout.started_at,
        "evidence": evidence,
        "next_decision": _next_decision(rollout),
    }


# What the rollout policy decides on a command (rows 2 and 3 of its table in docs/promotion.md).
_COMMAND_ENDS = {
    Command.ABORT: (RolloutAction.ROLL_BACK, Reason.ABORTED),
    Command.COMPLETE: (RolloutAction.COMPLETE, Reason.COMPLETED_BY_OPERATOR),
}


def _next_decision(rollout: Rollout) -> dict[str, Any] | None:
    if not rollout.in_progress:
        return None
    if rollout.command is not None:
        action, reason = _COMMAND_ENDS[rollout.command.command]
        detail = f"{rollout.command.command.value} requested ({rollout.command.trigger}); the next tick applies it"
        return {"action": action.value, "reason": reason.value, "detail": detail, "since": rollout.command.at}
    last = rollout.last_decision
    if last is None or last.action is not RolloutAction.HOLD:
        return None  # nothing decided at this step yet
    return {"action": last.action.value, "reason": last.reason.value, "detail": last.detail, "since": last.at}
