"""feedback's request handling: answers recorded once, statistics, the list of predictions, monitoring."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import flask
import monitoring_report

from sentiment_core import config, http
from sentiment_core.contract import MODEL_NAME
from sentiment_core.deployment_store import DeploymentStore, StateUnavailable, deployments_database
from sentiment_core.deployments import DeploymentState
from sentiment_core.evidence import DEFAULT_EVIDENCE, EvidenceSettings, client_fingerprint
from sentiment_core.monitoring import MAX_WINDOW_HOURS, DriftSettings
from sentiment_core.records import (
    PREDICTION_ID,
    FeedbackConflict,
    InvalidPageToken,
    NotFound,
    StoreUnavailable,
)
from sentiment_core.rollout import RolloutStatus
from sentiment_core.store import Store
from sentiment_core.tokens import verify_feedback_token
from sentiment_core.web import PublicSettings, request_client

logger = logging.getLogger("sentiment")


@dataclasses.dataclass(frozen=True)
class Settings:
    """feedback's settings: the public functions' own, the model whose deployment it reports, the drift rule."""

    public: PublicSettings
    model_name: str  # whose deployment document `GET /statistics` reports
    # GET /monitoring judges drift as the watcher's scheduled evaluation does: the same DRIFT_* variables.
    drift: DriftSettings
    # GET /predictions pages through every user's review text: served only where turned on (the operators'
    # IAM-only deployment, the local demo); the public deployment answers 404 listing_disabled.
    predictions_listing: bool = False
    deployments_database: str = "(default)"  # DEPLOYMENTS_DATABASE: where that document is (read only)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return cls(
            public=PublicSettings.from_env(env),
            model_name=config.optional("MODEL_NAME", MODEL_NAME, env),
            drift=DriftSettings.from_env(env),
            predictions_listing=on_or_off("PREDICTIONS_LISTING", config.optional("PREDICTIONS_LISTING", "off", env)),
            deployments_database=deployments_database(env),
        )


def on_or_off(name: str, value: str) -> bool:
    """A switch setting: `on` or `off`, nothing else (a typo must not open or close a route silently)."""
    if value not in ("on", "off"):
        raise config.ConfigError(f"{name} must be on or off, got {value!r}")
    return value == "on"


@dataclasses.dataclass(frozen=True)
class DeploymentSummary:
    """What the page shows of the deployment: the stable version and, during a rollout, the candidate's share."""

    stable_version: str | None
    candidate_version: str | None
    candidate_percent: int
    rollout_state: RolloutStatus | None  # the last rollout's, finished or not

    @classmethod
    def of(cls, state: DeploymentState) -> DeploymentSummary:
        """The candidate only while a rollout is in progress; otherwise what the last redeploy put in service."""
        rollout = state.rollout
        if rollout is not None and rollout.in_progress:
            return cls(rollout.stable_version, rollout.candidate_version, rollout.candidate_percent, rollout.state)
        serving = state.serving.version if state.serving is not None else None
        return cls(serving, None, 0, rollout.state if rollout is not None else None)

    def as_api(self) -> dict[str, str | int | None]:
        return {
            "stable_version": self.stable_version,
            "candidate_version": self.candidate_version,
            "candidate_percent": self.candidate_percent,
            "rollout_state": self.rollout_state.value if self.rollout_state is not None else None,
        }


def read_deployment(deployments: Callable[[], DeploymentStore]) -> DeploymentSummary | None:
    """The deployment document, summarised; None when it cannot be read, so the statistics are served without it."""
    try:
        return DeploymentSummary.of(deployments().read().state)
    # TypeError: a part written in a format this code cannot read (DeploymentState.from_document builds it).
    except (StateUnavailable, StoreUnavailable, TypeError) as exc:
        logger.warning("statistics served without the deployment: cannot read its document: %s", exc)
        return None


def unavailable() -> http.ApiError:
    """A new error each time: an exception raised from many threads must not share its cause and traceback."""
    return http.ApiError(503, "store_unavailable", "the store cannot be reached; retry later", {"Retry-After": "5"})


def handle_feedback(
    request: flask.Request,
    store: Callable[[], Store],
    secret: bytes,
    evidence: EvidenceSettings = DEFAULT_EVIDENCE,
) -> flask.Response:
    """POST /: 200 with the stored prediction; same answer again is 200 and counted once; another answer 409.

    The answer is stored with the client's fingerprint (never its address) and counts as rollout evidence only
    within the client's cap (`evidence`, sentiment_core.evidence).
    """
    body = http.read_json_object(request)
    http.check_fields(body, {"prediction_id": str, "is_positive_user_answered": bool, "feedback_token": str})
    prediction_id = http.check_pattern(body["prediction_id"], PREDICTION_ID, "prediction_id")
    if not verify_feedback_token(secret, prediction_id, body["feedback_token"]):
        raise http.ApiError(403, "invalid_feedback_token", "feedback_token does not match prediction_id")
    try:
        fingerprint = functools.partial(client_fingerprint, secret, request_client(request, evidence))
        prediction, _ = store().record_feedback(
            prediction_id, body["is_positive_user_answered"], fingerprint, evidence.max_per_client
        )
    except NotFound as exc:
        raise http.ApiError(404, "prediction_not_found", "no prediction with that id") from exc
    except FeedbackConflict as exc:
        raise http.ApiError(409, "feedback_conflict", "this prediction already has a different answer") from exc
    except StoreUnavailable as exc:
        raise unavailable() from exc
    return http.json_response(prediction.to_api())


def handle_statistics(
    request: flask.Request, store: Callable[[], Store], deployments: Callable[[], DeploymentStore]
) -> flask.Response:
    """GET /statistics: correctness overall and per model version, and which versions serve (null if unknown)."""
    _no_query(request, allowed=set())
    try:
        total, by_version = store().statistics()
    except StoreUnavailable as exc:
        raise unavailable() from exc
    statistics = total.as_api() | {"by_model_version": {v: c.as_api() for v, c in sorted(by_version.items())}}
    deployment = read_deployment(deployments)
    summary = None if deployment is None else deployment.as_api()
    return http.json_response({"statistics": statistics, "deployment": summary})


def listing_disabled(request: flask.Request) -> flask.Response:
    """GET /predictions where PREDICTIONS_LISTING is off: reviews are personal data, not for anonymous callers."""
    raise http.ApiError(404, "listing_disabled", "listing predictions is not served here")


# ASCII digits only: str.isdigit() also passes "\u00b2", which int() refuses, and "\u0661", which it reads as 1.
LIMIT = re.compile(r"[0-9]{1,3}")


def handle_predictions(request: flask.Request, store: Callable[[], Store]) -> flask.Response:
    """GET /predictions?limit=1..100&page_token=...: newest first."""
    _no_query(request, allowed={"limit", "page_token"})
    raw_limit = request.args.get("limit", "20")
    if not LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= 100:
        raise http.bad_request("invalid_limit", "limit must be an integer from 1 to 100")
    page_token = request.args.get("page_token")
    if page_token is not None and (not page_token or len(page_token) > 512):
        raise http.bad_request("invalid_page_token", "page_token is not one this service issued")
    try:
        items, next_token = store().list_predictions(int(raw_limit), page_token)
    except InvalidPageToken as exc:
        raise http.bad_request("invalid_page_token", "page_token is not one this service issued") from exc
    except StoreUnavailable as exc:
        raise unavailable() from exc
    return http.json_response({"predictions": [p.to_api() for p in items], "next_page_token": next_token})


HOURS = re.compile(r"[1-9][0-9]{0,2}")  # ASCII digits, no sign, no leading zero; the range is checked apart


def parse_hours(raw: str | None, default: int) -> int:
    """The `hours` query parameter: a whole number from 1 to MAX_WINDOW_HOURS, `default` when absent."""
    if raw is None:
        return default
    if not HOURS.fullmatch(raw) or int(raw) > MAX_WINDOW_HOURS:
        raise http.bad_request("invalid_hours", f"hours must be a whole number from 1 to {MAX_WINDOW_HOURS}")
    return int(raw)


def utc_now() -> datetime:
    return datetime.now(UTC)


def handle_monitoring(
    request: flask.Request,
    db: Callable[[], Any],
    settings: DriftSettings,
    timeout_s: float,
    clock: Callable[[], datetime] = utc_now,
) -> flask.Response:
    """GET /monitoring?hours=1..168: each version's last hours against its reference (monitoring_report)."""
    _no_query(request, allowed={"hours"})
    hours = parse_hours(request.args.get("hours"), settings.window_hours)
    try:
        report = monitoring_report.read_report(db(), hours, settings, clock(), timeout_s)
    except StoreUnavailable as exc:
        raise unavailable() from exc
    return http.json_response({"monitoring": report.as_api()})


def _no_query(request: flask.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise http.bad_request("unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)}")
    repeated = [name for name in request.args if len(request.args.getlist(name)) > 1]
    if repeated:
        raise http.bad_request("invalid_parameter", f"repeated query parameter(s): {', '.join(repeated)}")
