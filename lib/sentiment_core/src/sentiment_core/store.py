"""The Firestore document model: predictions, feedback and per-version counters that always equal the records.

- `predictions/{id}`: random client-chosen ids (uuid4), so a retried write cannot create a duplicate.
- `counter_shards/{version}--{n}`: `predictions`, `feedback` and `correct` per model version, split over
  NUM_SHARDS documents and changed only with Increment, in the same batch or transaction as the record they
  count. No single hot document; counters equal the records by construction.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore

PREDICTIONS = "predictions"
COUNTER_SHARDS = "counter_shards"
NUM_SHARDS = 16
PREDICTION_ID = re.compile(r"[0-9a-f]{32}")
COUNTER_FIELDS = ("predictions", "feedback", "correct")


class StoreUnavailable(RuntimeError):
    """Firestore did not answer within the bound, or refused for a transient reason."""


class NotFound(LookupError):
    """No prediction with that id."""


class FeedbackConflict(RuntimeError):
    """The prediction already has a different answer."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One stored prediction; field names of the document are the snake_case of these."""

    id: str
    text: str
    probability: float
    model_answer: bool
    user_answer: bool | None
    model_name: str
    model_version: str
    mlflow_run_id: str
    inference_elapsed: float
    created_at: datetime

    @property
    def correct(self) -> bool | None:
        return None if self.user_answer is None else self.user_answer == self.model_answer

    def to_api(self) -> dict[str, Any]:
        """The object clients see; field names follow the original system's API (contract)."""
        return {
            "id": self.id,
            "text": self.text,
            "probability": self.probability,
            "is_positive": {"model_answered": self.model_answer, "user_answered": self.user_answer},
            "details": {
                "model_name": self.model_name,
                "model_version": self.model_version,
                "mlflow_run_id": self.mlflow_run_id,
                "inference_elapsed": self.inference_elapsed,
                "timestamp": self.created_at.isoformat().replace("+00:00", "Z"),
            },
        }

    def to_document(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        del document["id"]
        document["has_feedback"] = self.user_answer is not None
        document["correct"] = self.correct
        document["feedback_at"] = self.created_at if self.user_answer is not None else None
        return document

    @classmethod
    def from_snapshot(cls, snapshot: Any) -> Prediction:
        data = snapshot.to_dict()
        names = {f.name for f in dataclasses.fields(cls)} - {"id"}
        created = data["created_at"]
        return cls(id=snapshot.id, **{name: data[name] for name in names} | {"created_at": _as_utc(created)})


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Counts:
    predictions: int = 0
    feedback: int = 0
    correct: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f) + getattr(other, f) for f in COUNTER_FIELDS))

    def as_api(self) -> dict[str, Any]:
        rate = self.correct / self.feedback if self.feedback else None
        return {
            "correctness_rate": rate,
            "predictions": self.predictions,
            "feedback": self.feedback,
            "correct": self.correct,
        }


class Store:
    """All reads and writes of the serving path, each bounded by timeout_s."""

    def __init__(self, client: firestore.Client, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        # Retry transient errors, but never past the bound: a request must not hang past the function timeout.
        self._retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)

    def save_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Create the records and bump their counters in one atomic batch."""
        batch = self._client.batch()
        for prediction in predictions:
            batch.create(self._client.collection(PREDICTIONS).document(prediction.id), prediction.to_document())
        by_version: dict[str, Counts] = {}
        for prediction in predictions:
            counted = Counts(1, int(prediction.user_answer is not None), int(bool(prediction.correct)))
            by_version[prediction.model_version] = by_version.get(prediction.model_version, Counts()) + counted
        for version, counts in by_version.items():
            batch.set(self._shard(version), self._increments(version, counts), merge=True)
        try:
            batch.commit(retry=self._retry, timeout=self._timeout)
        except gexc.AlreadyExists:
            # An earlier attempt committed and its answer was lost: the records exist exactly once.
            if not all(self._exists(p.id) for p in predictions):
                raise
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def record_feedback(self, prediction_id: str, answer: bool, attempts: int = 5) -> tuple[Prediction, bool]:
        """Store a user's answer once; returns the prediction and whether anything changed.

        Optimistic, not a transaction: read, then commit the answer and its counter increments in one batch
        guarded by the record's update time. A concurrent answer makes the precondition fail and we read again.
        Transactions would lock the counter shards they increment, and under load they queue and time out.
        """
        reference = self._client.collection(PREDICTIONS).document(prediction_id)
        for _ in range(attempts):
            try:
                snapshot = reference.get(retry=self._retry, timeout=self._timeout)
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            if not snapshot.exists:
                raise NotFound(prediction_id)
            prediction = Prediction.from_snapshot(snapshot)
            if prediction.user_answer is not None:
                if prediction.user_answer != answer:
                    raise FeedbackConflict(prediction_id)
                return prediction, False
            updated = dataclasses.replace(prediction, user_answer=answer)
            batch = self._client.batch()
            batch.update(
                reference,
                {
                    "user_answer": answer,
                    "has_feedback": True,
                    "correct": updated.correct,
                    "feedback_at": datetime.now(UTC),
                },
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
            counts = Counts(0, 1, int(bool(updated.correct)))
            batch.set(
                self._shard(prediction.model_version), self._increments(prediction.model_version, counts), merge=True
            )
            try:
                batch.commit(retry=self._retry, timeout=self._timeout)
            except gexc.FailedPrecondition:
                continue  # someone answered between our read and our write: decide again on fresh data
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            return updated, True
        raise StoreUnavailable(f"prediction {prediction_id} kept changing during {attempts} attempts")

    def statistics(self) -> tuple[Counts, dict[str, Counts]]:
        """Totals and per-version counts, summed over the counter shards."""
        by_version: dict[str, Counts] = {}
        try:
            for shard in self._client.collection(COUNTER_SHARDS).stream(retry=self._retry, timeout=self._timeout):
                data = shard.to_dict()
                counts = Counts(*(int(data.get(f, 0)) for f in COUNTER_FIELDS))
                version = str(data["model_version"])
                by_version[version] = by_version.get(version, Counts()) + counts
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        total = sum(by_version.values(), Counts())
        return total, by_version

    def list_predictions(self, limit: int, page_token: str | None) -> tuple[list[Prediction], str | None]:
        """Newest first; the page token is the position after the last item returned."""
        query = (
            self._client.collection(PREDICTIONS)
            .order_by("created_at", direction="DESCENDING")
            .order_by("__name__", direction="DESCENDING")
        )
        if page_token is not None:
            created_at, last_id = decode_page_token(page_token)
            query = query.start_after({"created_at": created_at, "__name__": self._document_path(last_id)})
        try:
            snapshots = list(query.limit(limit + 1).stream(retry=self._retry, timeout=self._timeout))
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        items = [Prediction.from_snapshot(s) for s in snapshots[:limit]]
        token = encode_page_token(items[-1]) if len(snapshots) > limit else None
        return items, token

    def _document_path(self, prediction_id: str) -> Any:
        return self._client.collection(PREDICTIONS).document(prediction_id)

    def _exists(self, prediction_id: str) -> bool:
        reference = self._client.collection(PREDICTIONS).document(prediction_id)
        try:
            return reference.get(retry=self._retry, timeout=self._timeout).exists
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _shard(self, version: str) -> Any:
        return self._client.collection(COUNTER_SHARDS).document(f"{version}--{random.randrange(NUM_SHARDS)}")

    @staticmethod
    def _increments(version: str, counts: Counts) -> dict[str, Any]:
        fields: dict[str, Any] = {"model_version": version}
        for name in COUNTER_FIELDS:
            value = getattr(counts, name)
            if value:
                fields[name] = firestore.Increment(value)
        return fields


class InvalidPageToken(ValueError):
    """A page token that this service did not issue."""


def encode_page_token(last: Prediction) -> str:
    raw = json.dumps({"t": last.created_at.isoformat(), "id": last.id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = _as_utc(datetime.fromisoformat(data["t"]))
        last_id = data["id"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidPageToken(token) from exc
    if not isinstance(last_id, str) or not PREDICTION_ID.fullmatch(last_id):
        raise InvalidPageToken(token)
    return created_at, last_id
