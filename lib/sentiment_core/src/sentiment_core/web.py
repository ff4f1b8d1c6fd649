"""What the two public functions share beyond the boundary: settings, the Firestore store, request logging."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

import flask

from sentiment_core import config, http, logs
from sentiment_core.evidence import DEFAULT_EVIDENCE, EvidenceSettings, client_address

logger = logging.getLogger("sentiment")


@dataclasses.dataclass(frozen=True)
class PublicSettings:
    """Settings of predict and feedback; Terraform sets each of these variables."""

    feedback_token_secret: bytes
    allowed_origins: str
    firestore_timeout_s: float
    project: str | None
    database: str
    # Whose answers count as rollout evidence, and how many of them (EVIDENCE_MAX_PER_CLIENT, CLIENT_ADDRESS_HOPS).
    evidence: EvidenceSettings = DEFAULT_EVIDENCE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PublicSettings:
        return cls(
            feedback_token_secret=config.secret("FEEDBACK_TOKEN_SECRET", env),
            allowed_origins=config.optional("ALLOWED_ORIGINS", "", env),
            firestore_timeout_s=config.number("FIRESTORE_TIMEOUT_S", 3.0, 0.1, 30.0, env),
            project=config.optional("GOOGLE_CLOUD_PROJECT", "", env) or None,
            database=config.optional("FIRESTORE_DATABASE", "(default)", env),
            evidence=EvidenceSettings.from_env(env),
        )


def request_client(request: flask.Request, settings: EvidenceSettings) -> str:
    """The address of the client that sent `request`, as far as the trusted proxies say (sentiment_core.evidence).

    Werkzeug joins repeated X-Forwarded-For headers with commas, as a proxy reading them would.
    """
    forwarded = ",".join(request.headers.getlist("X-Forwarded-For")) or None
    return client_address(forwarded, request.remote_addr, settings.client_address_hops)


def firestore_client(settings: PublicSettings):
    """A Firestore client; imported here so a process that never stores pays nothing."""
    from google.cloud import firestore

    from sentiment_core.records import StoreUnavailable

    try:
        return firestore.Client(project=settings.project, database=settings.database)
    except Exception as exc:  # no credentials or project: a dependency problem (503), not the client's (4xx)
        logger.error("cannot create the Firestore client: %s", exc)
        raise StoreUnavailable(str(exc)) from exc


def firestore_store(settings: PublicSettings, client=None):
    """A Store on `client`, else on a Firestore client of its own."""
    from sentiment_core.store import Store

    return Store(client if client is not None else firestore_client(settings), settings.firestore_timeout_s)


def rest_writer(settings: PublicSettings):
    """predict's lean Firestore writer (no client library to import: see firestore_rest)."""
    from sentiment_core.firestore_rest import RestPredictionWriter

    if not settings.project:
        raise config.ConfigError("GOOGLE_CLOUD_PROJECT must be set")
    return RestPredictionWriter(settings.project, settings.database, settings.firestore_timeout_s)


def serve(
    request: flask.Request,
    routes: Mapping[str, Mapping[str, http.Handler]],
    cors: http.Cors,
    **log_fields: object,
) -> flask.Response:
    """Dispatch one request and log it as one JSON line (no request body: reviews stay out of logs)."""
    started = time.perf_counter()
    logs.bind_trace(request.headers)
    response = http.dispatch(request, routes, cors, on_unexpected=lambda exc: logger.exception("unhandled error"))
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    severity = logging.WARNING if response.status_code >= 500 else logging.INFO
    logger.log(
        severity,
        f"{request.method} {request.path} {response.status_code}",
        extra={
            "http_method": request.method,
            "path": request.path,
            "status": response.status_code,
            "latency_ms": latency_ms,
            **log_fields,
        },
    )
    return response
