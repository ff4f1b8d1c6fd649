"""The Firestore document model: records, counters, ids and page tokens. No client library here.

- `predictions/{id}`: ids chosen by predict, random (uuid4) or, for a request with an Idempotency-Key, derived
  from the key and the text's position; records are only ever created where none exists, so a retried write
  cannot create a duplicate. An idempotent request's records carry `request_sha256`, the fingerprint of its body.
  Each record has `expire_at` (created_at + predict's PREDICTION_RETENTION_DAYS): Firestore's TTL policy on
  that field deletes it some time after (typically within a day). Answering a prediction keeps its expiry.
- `counter_shards/{version}--{n}`: `predictions`, `feedback` and `correct` per model version, split over
  NUM_SHARDS documents and changed only with increments, in the same atomic commit as the record they
  count. No single hot document; counters equal the records by construction, until records expire (counters
  keep their totals: they agree over the hours from first_retained_hour on).
- `counter_windows/{version}--{YYYYMMDDHH}--{n}`: the same counts per model version and UTC hour (plus
  `positive`, the model's positive answers, and `server_errors`), for the rollout's evidence over a window. A
  record counts in the hour it was created, its feedback too whenever that arrives, so the counters of an
  hour equal its records and a window is the predictions made in it. `evidence_feedback` and `evidence_correct`
  count only the answers the rollout may believe: at most EVIDENCE_MAX_PER_CLIENT of one client per version and
  hour (sentiment_core.evidence), those whose record says `counted_as_evidence`. Read by `store.window_evidence`.
- `evidence_clients/{version}--{YYYYMMDDHH}--{fingerprint}`: how many answers of one client count as evidence
  for that version's predictions of that hour (`counted`), read and written with the answer it decides on.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

PREDICTIONS = "predictions"
COUNTER_SHARDS = "counter_shards"
NUM_SHARDS = 16
PREDICTION_ID = re.compile(r"[0-9a-f]{32}")
COUNTER_FIELDS = ("predictions", "feedback", "correct")
COUNTER_WINDOWS = "counter_windows"
WINDOW_FIELDS = (
    "predictions",
    "positive",
    "feedback",
    "correct",
    "server_errors",
    "evidence_feedback",
    "evidence_correct",
)


class StoreUnavailable(RuntimeError):
    """Firestore did not answer within the bound, or refused for a transient reason."""


class NotFound(LookupError):
    """No prediction with that id."""


class FeedbackConflict(RuntimeError):
    """The prediction already has a different answer."""


class PredictionsExist(RuntimeError):
    """A record with one of the ids being created is already stored.

    deadline: the monotonic time by which the whole store call had to end; reading what is stored must end by
    then too, so an idempotent request stays within the same bound as any other.
    """

    def __init__(self, message: str, deadline: float | None = None) -> None:
        super().__init__(message)
        self.deadline = deadline


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
    # The share of the text's tokens the model knows (monitoring); None from a model without that output.
    known_fraction: float | None = None
    # When Firestore's TTL policy may delete the record (predict's PREDICTION_RETENTION_DAYS after created_at);
    # None on records stored before retention existed, which the policy never deletes.
    expire_at: datetime | None = None
    # Who answered (sentiment_core.evidence: a keyed fingerprint, never the address) and whether the answer was
    # within that client's cap, so counted in the rollout's evidence; the feedback export applies the same cap.
    client_fingerprint: str | None = None
    counted_as_evidence: bool | None = None

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
        return cls.from_document(snapshot.id, snapshot.to_dict())

    @classmethod
    def from_document(cls, prediction_id: str, data: dict[str, Any]) -> Prediction:
        """The record from a document's fields (extra fields, such as request_sha256, are not part of it; records
        stored before known_fraction, expire_at or the evidence fields existed have none)."""
        optional = {"known_fraction", "client_fingerprint", "counted_as_evidence"}
        names = {f.name for f in dataclasses.fields(cls)} - {"id", "expire_at"} - optional
        created, expire_at = data["created_at"], data.get("expire_at")
        return cls(
            id=prediction_id,
            **{name: data[name] for name in names} | {"created_at": _as_utc(created)},
            **{name: data.get(name) for name in optional},
            expire_at=None if expire_at is None else _as_utc(expire_at),
        )


def expiry(created_at: datetime, retention_days: int) -> datetime:
    """`expire_at` of a record created at `created_at` and kept `retention_days` (the TTL policy's field)."""
    return created_at + timedelta(days=retention_days)


def first_retained_hour(now: datetime, retention_days: int) -> datetime:
    """The first UTC hour whose records are all still stored at `now`: counters and records agree from it on.

    A record expires retention_days after it was made and the TTL policy deletes it some time after; a record of
    an hour that began after `now - retention` cannot have expired yet. Counters are never deleted, so over
    earlier hours they count more than the records left (docs/architecture.md, "Personal data").
    """
    return window_hour(now - timedelta(days=retention_days)) + timedelta(hours=1)


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


@dataclasses.dataclass(frozen=True)
class WindowCounts:
    """Increments of one window counter: what some records (or failed requests) add to their version's hour."""

    predictions: int = 0
    positive: int = 0
    feedback: int = 0
    correct: int = 0
    server_errors: int = 0
    evidence_feedback: int = 0  # answers within their client's cap (Prediction.counted_as_evidence)
    evidence_correct: int = 0

    @classmethod
    def of(cls, prediction: Prediction) -> WindowCounts:
        return cls(
            1, int(prediction.model_answer), int(prediction.user_answer is not None), int(bool(prediction.correct))
        ) + cls.evidence_of(prediction)

    @classmethod
    def evidence_of(cls, prediction: Prediction) -> WindowCounts:
        """The evidence fields of an answered prediction: its answer, if it counted, and whether it agreed."""
        counted = prediction.user_answer is not None and bool(prediction.counted_as_evidence)
        return cls(evidence_feedback=int(counted), evidence_correct=int(counted and bool(prediction.correct)))

    def __add__(self, other: WindowCounts) -> WindowCounts:
        return WindowCounts(*(getattr(self, f) + getattr(other, f) for f in WINDOW_FIELDS))


def window_hour(moment: datetime) -> datetime:
    """The UTC hour that `moment` falls in: the granularity of the window counters."""
    utc = _as_utc(moment)
    # Built, not replace()d: the client library's timestamps are a datetime subclass whose replace() fails.
    return datetime(utc.year, utc.month, utc.day, utc.hour, tzinfo=UTC)


def window_key(version: str, moment: datetime) -> str:
    """`{version}--{YYYYMMDDHH}`: the id prefix of a version's window counters for the hour of `moment`.

    Fixed-width hours sort as text in time order, so a version's hours from one on are an id range.
    """
    return f"{version}--{window_hour(moment):%Y%m%d%H}"


def window_document_id(version: str, moment: datetime, shard: int) -> str:
    """The id of one shard of a version's window counter for the hour of `moment`."""
    if not 0 <= shard < NUM_SHARDS:
        raise ValueError(f"shard must be in 0..{NUM_SHARDS - 1}, got {shard}")
    return f"{window_key(version, moment)}--{shard}"


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
    # OverflowError: a time that exists in its own offset but not in UTC (9999-12-31T23:59:59-14:00).
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidPageToken(token) from exc
    if not isinstance(last_id, str) or not PREDICTION_ID.fullmatch(last_id):
        raise InvalidPageToken(token)
    return created_at, last_id
