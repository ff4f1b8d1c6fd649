"""predict's request handling: validated input in, stored predictions out."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import flask

from sentiment_core import config, http
from sentiment_core.records import Prediction, StoreUnavailable
from sentiment_core.tokens import feedback_token
from sentiment_core.web import PublicSettings

MAX_BATCH = 100
RETRY_AFTER_S = "5"


@dataclasses.dataclass(frozen=True)
class Settings:
    public: PublicSettings
    model_uri: str

    @classmethod
    def from_env(cls) -> Settings:
        config.required("GOOGLE_CLOUD_PROJECT")  # the REST writer names the database by project
        return cls(public=PublicSettings.from_env(), model_uri=config.required("MODEL_URI"))


def parse_body(body: dict[str, Any]) -> tuple[list[str], bool | None, bool]:
    """(texts, user answer, is batch) from a single `text` or a `texts` batch."""
    if "texts" in body:
        http.check_fields(body, {"texts": list})
        texts = body["texts"]
        if not 1 <= len(texts) <= MAX_BATCH:
            raise http.bad_request("invalid_batch", f"texts must hold 1 to {MAX_BATCH} texts")
        cleaned = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise http.bad_request("invalid_type", f"texts[{index}] must be a string")
            cleaned.append(http.clean_text(text, f"texts[{index}]"))
        return cleaned, None, True
    http.check_fields(body, {"text": str}, {"is_positive_user_answered": bool})
    return [http.clean_text(body["text"])], body.get("is_positive_user_answered"), False


def to_api(prediction: Prediction, secret: bytes) -> dict[str, Any]:
    """The stored prediction plus the token that lets its receiver answer for it."""
    http.finite_number(prediction.probability)
    return {**prediction.to_api(), "feedback_token": feedback_token(secret, prediction.id)}


def handle_predict(request: flask.Request, model: Any, store: Callable[[], Any], secret: bytes) -> flask.Response:
    """POST /: infer, store every prediction (or none), answer 201; 503 if the store cannot be written in time."""
    texts, user_answer, is_batch = parse_body(http.read_json_object(request))
    started = time.perf_counter()
    probabilities = model.predict(texts)
    elapsed = time.perf_counter() - started
    manifest = model.manifest
    now = datetime.now(UTC)
    predictions = [
        Prediction(
            id=uuid.uuid4().hex,
            text=text,
            probability=float(probability),
            model_answer=bool(probability >= manifest.threshold),
            user_answer=user_answer,
            model_name=manifest.model_name,
            model_version=manifest.model_version or "unregistered",
            mlflow_run_id=manifest.mlflow_run_id,
            inference_elapsed=elapsed / len(texts),
            created_at=now,
        )
        for text, probability in zip(texts, probabilities, strict=True)
    ]
    objects = [to_api(p, secret) for p in predictions]  # non-finite output fails here, before anything is stored
    try:
        store().save_predictions(predictions)
    except StoreUnavailable as exc:
        raise http.ApiError(
            503,
            "store_unavailable",
            "predictions cannot be stored right now; retry later",
            {"Retry-After": RETRY_AFTER_S},
        ) from exc
    return http.json_response({"predictions": objects} if is_batch else objects[0], 201)


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
