"""predict's request handling: validated input in, stored predictions out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import flask

from sentiment_core import config, http
from sentiment_core.evidence import DEFAULT_EVIDENCE, EvidenceSettings, client_fingerprint
from sentiment_core.records import Prediction, PredictionsExist, StoreUnavailable, expiry
from sentiment_core.tokens import feedback_token
from sentiment_core.web import PublicSettings, request_client

MAX_BATCH = 100
RETRY_AFTER_S = "5"
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


DEFAULT_RETENTION_DAYS = 30
RETENTION_DAYS = re.compile(r"[1-9][0-9]{0,3}")  # whole days, ASCII digits; the range is checked apart
MAX_RETENTION_DAYS = 3650
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Settings:
    public: PublicSettings
    model_uri: str
    # Days each stored prediction (a review: personal data) is kept before Firestore's TTL policy deletes it.
    retention_days: int = DEFAULT_RETENTION_DAYS
    model_sha256: str | None = None  # MODEL_SHA256: the model file's sha256; unset only when run by hand

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        config.required("GOOGLE_CLOUD_PROJECT", env)  # the REST writer names the database by project
        sha256 = config.optional("MODEL_SHA256", "", env) or None
        if sha256 is not None and not SHA256.fullmatch(sha256):
            raise config.ConfigError(f"MODEL_SHA256 must be 64 lowercase hex digits, got {sha256!r}")
        return cls(
            public=PublicSettings.from_env(env),
            model_uri=config.required("MODEL_URI", env),
            retention_days=parse_retention_days(
                config.optional("PREDICTION_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS), env)
            ),
            model_sha256=sha256,
        )


def parse_retention_days(raw: str) -> int:
    """PREDICTION_RETENTION_DAYS: a whole number of days from 1 to MAX_RETENTION_DAYS."""
    if not RETENTION_DAYS.fullmatch(raw) or int(raw) > MAX_RETENTION_DAYS:
        raise config.ConfigError(
            f"PREDICTION_RETENTION_DAYS must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, got {raw!r}"
        )
    return int(raw)


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A validated POST / body."""

    texts: list[str]
    user_answer: bool | None
    is_batch: bool
    explain: bool = False


def parse_body(body: dict[str, Any]) -> PredictRequest:
    """A single `text` or a `texts` batch, each optionally with `"explain": true`."""
    if "texts" in body:
        http.check_fields(body, {"texts": list}, {"explain": bool})
        texts = body["texts"]
        if not 1 <= len(texts) <= MAX_BATCH:
            raise http.bad_request("invalid_batch", f"texts must hold 1 to {MAX_BATCH} texts")
        cleaned = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise http.bad_request("invalid_type", f"texts[{index}] must be a string")
            cleaned.append(http.clean_text(text, f"texts[{index}]"))
        return PredictRequest(cleaned, None, True, body.get("explain", False))
    http.check_fields(body, {"text": str}, {"is_positive_user_answered": bool, "explain": bool})
    return PredictRequest(
        [http.clean_text(body["text"])], body.get("is_positive_user_answered"), False, body.get("explain", False)
    )


def idempotency_key(request: flask.Request) -> str | None:
    """The request's Idempotency-Key header, checked; None when absent."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise http.bad_request("invalid_idempotency_key", "Idempotency-Key must be 1 to 64 of A-Z a-z 0-9 _ -")
    return key


def request_fingerprint(body: dict[str, Any]) -> str:
    """sha256 of the body's meaning (key order and spacing aside): what makes a retry 'the same request'."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def prediction_ids(key: str | None, count: int) -> list[str]:
    """Random ids, or ids derived from the key, one per position, so every retry names the same records."""
    if key is None:
        return [uuid.uuid4().hex for _ in range(count)]
    return [hashlib.sha256(f"idempotency-key:{key}:{i}".encode()).hexdigest()[:32] for i in range(count)]


def resolve_existing(
    ours: list[Prediction], stored: list[tuple[Prediction, str | None] | None], fingerprint: str
) -> tuple[list[Prediction], bool]:
    """What to answer when records with our ids exist: the stored ones and whether that is a replay.

    Stored by this very request (its earlier attempt's answer was lost): not a replay. Stored by an earlier
    request with the same body: a replay. Anything else: the key was used for another body (422).
    """
    if any(item is None or item[1] != fingerprint for item in stored):
        raise http.ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was used with another body; use a new key"
        )
    predictions = [item[0] for item in stored if item is not None]
    # Whether an answer counted as evidence is decided on storing: not part of what this request computed.
    undecided = [dataclasses.replace(p, counted_as_evidence=None) for p in predictions]
    return predictions, undecided != [dataclasses.replace(p, counted_as_evidence=None) for p in ours]


def to_api(prediction: Prediction, secret: bytes) -> dict[str, Any]:
    """The stored prediction plus the token that lets its receiver answer for it."""
    http.finite_number(prediction.probability)
    return {**prediction.to_api(), "feedback_token": feedback_token(secret, prediction.id)}


def handle_predict(
    request: flask.Request,
    model: Any,
    store: Callable[[], Any],
    secret: bytes,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    evidence: EvidenceSettings = DEFAULT_EVIDENCE,
) -> flask.Response:
    """POST /: infer, store every prediction (or none), answer 201; 503 if the store cannot be written in time.

    With an Idempotency-Key, a retry of the same body answers what the first attempt stored, whatever that
    attempt's own answer was (201, 503 or none), and stores nothing new. With "explain": true each answer also
    says why (answered, never stored), when the model can explain and made the answers (docs/architecture.md).
    An answer given here is feedback: stored with the client's fingerprint and counted as evidence within the
    client's cap (`evidence`), as feedback's are.
    """
    key = idempotency_key(request)
    body = http.read_json_object(request)
    parsed = parse_body(body)
    fingerprint = request_fingerprint(body) if key is not None else None
    version = model.manifest.model_version or "unregistered"
    try:
        predictions, explanations = _infer(model, parsed, prediction_ids(key, len(parsed.texts)), retention_days)
        if parsed.user_answer is not None:
            address = request_client(request, evidence)
            predictions = [
                dataclasses.replace(p, client_fingerprint=client_fingerprint(secret, address, p.created_at))
                for p in predictions
            ]
        objects = [to_api(p, secret) for p in predictions]  # non-finite output fails here, before anything is stored
    except Exception:
        # The model failed on a valid request (an exception, a non-finite output): this version's server error,
        # counted in its window for the rollout. Crashes and a model that never loads cannot count themselves;
        # the rollout sees those as a candidate that is not ready.
        _count_server_error(store, version)
        raise
    replayed = False
    try:
        store().save_predictions(predictions, request_sha256=fingerprint, max_per_client=evidence.max_per_client)
    except PredictionsExist as exists:
        if fingerprint is None:  # a random id taken: not this request's doing, and nothing was stored
            raise _unavailable(key) from None
        try:
            stored = store().read_predictions([p.id for p in predictions], exists.deadline)
        except StoreUnavailable as exc:
            raise _unavailable(key) from exc
        existing, replayed = resolve_existing(predictions, stored, fingerprint)
        objects = [to_api(p, secret) for p in existing]
        if not all(made_by_this_model(p, model.manifest) for p in existing):
            explanations = None  # another model's answers: this model's reasons would not be theirs
    except StoreUnavailable as exc:
        raise _unavailable(key) from exc
    if explanations is not None:
        for answer, explanation in zip(objects, explanations, strict=True):
            answer["details"]["explanation"] = explanation.to_api()
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return http.json_response({"predictions": objects} if parsed.is_batch else objects[0], 201, headers)


def made_by_this_model(prediction: Prediction, manifest: Any) -> bool:
    """Whether the serving model is the one that made a stored prediction (same name, version and run).

    A replayed request's stored texts are its own (same fingerprint, same body), so this model's explanations of
    them, computed for this request, explain the stored answers exactly when this model made them.
    """
    return (prediction.model_name, prediction.model_version, prediction.mlflow_run_id) == (
        manifest.model_name,
        manifest.model_version or "unregistered",
        manifest.mlflow_run_id,
    )


def _infer(
    model: Any, parsed: PredictRequest, ids: list[str], retention_days: int
) -> tuple[list[Prediction], list[Any] | None]:
    """The model's predictions for the texts, as records to store, and their explanations when asked for and the
    model has them (None otherwise: a model exported before explanations answers without them)."""
    texts, user_answer = parsed.texts, parsed.user_answer
    explanations = None
    started = time.perf_counter()
    if parsed.explain and model.explains:
        probabilities, known, explanations = model.explain(texts)
    else:
        probabilities, known = model.infer(texts)
    elapsed = time.perf_counter() - started
    manifest = model.manifest
    now = datetime.now(UTC)
    predictions = [
        Prediction(
            id=prediction_id,
            text=text,
            probability=float(probability),
            model_answer=bool(probability >= manifest.threshold),
            user_answer=user_answer,
            model_name=manifest.model_name,
            model_version=manifest.model_version or "unregistered",
            mlflow_run_id=manifest.mlflow_run_id,
            inference_elapsed=elapsed / len(texts),
            created_at=now,
            known_fraction=None if known is None else float(known[i]),
            expire_at=expiry(now, retention_days),
        )
        for i, (prediction_id, text, probability) in enumerate(zip(ids, texts, probabilities, strict=True))
    ]
    return predictions, explanations


def _count_server_error(store: Callable[[], Any], version: str) -> None:
    try:
        writer = store()
    except Exception:  # no writer (no project, no token): the request's own error is what matters
        return
    writer.count_server_error(version, datetime.now(UTC))


def _unavailable(key: str | None) -> http.ApiError:
    retry = (
        "retrying with the same Idempotency-Key is safe: nothing is stored twice"
        if key is not None
        else "retry later; send an Idempotency-Key header to make retries safe"
    )
    return http.ApiError(
        503, "store_unavailable", f"predictions cannot be stored right now; {retry}", {"Retry-After": RETRY_AFTER_S}
    )


def handle_healthz(model: Any) -> flask.Response:
    manifest = model.manifest
    return http.json_response(
        {
            "status": "ok",
            "model_name": manifest.model_name,
            "model_version": manifest.model_version or "unregistered",
            "mlflow_run_id": manifest.mlflow_run_id,
        }
    )
