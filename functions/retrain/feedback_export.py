"""User feedback as training data: answered predictions exported once, as JSON lines, into the data bucket.

What users typed becomes training data only through this path. An export reads the predictions answered after the
watermark (`feedback_at`) whose answer counted as evidence (`counted_as_evidence == true`: within its client's cap,
so one client cannot flood the training data), keeps one row per text (the latest answer wins: a person's most
recent judgement of that text), and, when at least `min_feedback` rows result and the last export is at least
`interval_s` old, writes one file `<DATA_URI>feedback/feedback-<watermark>.jsonl` and advances the watermark to the
newest answer it holds.

Exported once: the file's name is the window's start (the watermark it was read from), so after a crash between
the write and the watermark's advance the next tick finds the file, reads its newest answer and advances the
watermark without writing a second file. Texts exported in earlier windows are not looked up again: the training
data's own de-duplication handles a text answered in two windows.

The query needs a composite index on `predictions`: counted_as_evidence ASC, feedback_at ASC.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from retrain_decisions import FeedbackExport, RetrainState, exported

from sentiment_core.deployment_store import StateDocument
from sentiment_core.records import PREDICTIONS, StoreUnavailable
from sentiment_core.training_data import FEEDBACK_FOLDER, DataLocation

logger = logging.getLogger("sentiment.retrain")

MAX_ROWS = 50_000  # one file's answers at most; the rest waits for the next window


class ExportUnavailable(RuntimeError):
    """Firestore or the data bucket could not be read or written."""


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    min_feedback: int = 100  # RETRAIN_MIN_FEEDBACK: fewer new rows than this wait for more
    interval_s: float = 86400.0  # FEEDBACK_EXPORT_INTERVAL_S: at most one file per interval
    max_rows: int = MAX_ROWS
    # Answers younger than this are left for the next export: an answer's feedback_at is its instance's clock when
    # it was written, and one still committing (or from a slower clock) must not fall behind the watermark unseen.
    settle_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class Answer:
    """A user's answer to one prediction."""

    prediction_id: str
    text: str
    positive: bool
    answered_at: datetime

    def row(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "label": int(self.positive),
            "source": "feedback",
            "prediction_id": self.prediction_id,
            "answered_at": _timestamp(self.answered_at),
        }


@dataclasses.dataclass(frozen=True)
class ExportResult:
    exported: bool
    detail: str
    uri: str | None = None
    rows: int = 0

    def to_api(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def deduplicated(answers: Iterable[Answer]) -> list[Answer]:
    """One answer per text, the latest (ties: the larger prediction id), in the order they were answered."""
    latest: dict[str, Answer] = {}
    for answer in answers:
        kept = latest.get(answer.text)
        if kept is None or (answer.answered_at, answer.prediction_id) > (kept.answered_at, kept.prediction_id):
            latest[answer.text] = answer
    return sorted(latest.values(), key=lambda a: (a.answered_at, a.prediction_id))


def due(export: FeedbackExport, settings: ExportSettings, now: datetime) -> bool:
    return export.at is None or now - export.at >= timedelta(seconds=settings.interval_s)


def object_name(location: DataLocation, watermark: datetime | None) -> str:
    """The file of the window that starts after `watermark`: the same window always gets the same name."""
    start = "start" if watermark is None else watermark.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{location.folder(FEEDBACK_FOLDER)}feedback-{start}.jsonl"


def to_json_lines(answers: Iterable[Answer]) -> bytes:
    return "".join(json.dumps(a.row(), ensure_ascii=False) + "\n" for a in answers).encode()


def newest_answer(data: bytes) -> tuple[datetime, int]:
    """(the newest answered_at, the row count) of an exported file."""
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return max(datetime.fromisoformat(row["answered_at"]) for row in rows), len(rows)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class FeedbackExporter:
    """Reads answers from the predictions database, writes the file, advances the watermark in the state."""

    def __init__(
        self,
        predictions_db: Any,
        storage: Any,
        location: DataLocation,
        store: StateDocument[RetrainState],
        settings: ExportSettings,
        timeout_s: float = 30.0,
    ) -> None:
        self._db = predictions_db
        self._storage = storage
        self._location = location
        self._store = store
        self._settings = settings
        self._timeout = timeout_s

    def export_if_due(self, now: datetime) -> ExportResult:
        read = self._store.read().state.export
        if not due(read, self._settings, now):
            return ExportResult(False, f"the last export was at {read.at.isoformat()}: one per window")
        blob = self._storage.bucket(self._location.bucket).blob(object_name(self._location, read.watermark))
        uri = f"gs://{self._location.bucket}/{blob.name}"
        if self._exists(blob):
            return self._recover(blob, uri, read, now, "the window's file was written before a crash")
        answers = self.answers(read.watermark, until=now - timedelta(seconds=self._settings.settle_s))
        rows = deduplicated(answers)
        if len(rows) < self._settings.min_feedback:
            detail = f"{len(rows)} new answered text(s), fewer than {self._settings.min_feedback}"
            return ExportResult(False, detail, rows=len(rows))
        if not self._write(blob, to_json_lines(rows)):
            return self._recover(blob, uri, read, now, "another tick wrote the window's file")
        done = FeedbackExport(watermark=rows[-1].answered_at, at=now, uri=uri, rows=len(rows))
        why = f"{len(answers)} answer(s) after {read.watermark or 'the start'}, {len(rows)} distinct text(s)"
        self._store.apply(lambda state, _: exported(state, read, done, why))
        logger.info("exported %d feedback rows to %s", len(rows), uri, extra={"rows": len(rows), "uri": uri})
        return ExportResult(True, why, uri, len(rows))

    def answers(self, after: datetime | None, until: datetime | None = None) -> list[Answer]:
        """The answers counted as evidence, answered after `after` and not after `until`, oldest first (at most
        max_rows)."""
        from google.api_core import exceptions as gexc
        from google.cloud import firestore

        query = self._db.collection(PREDICTIONS).where(filter=firestore.FieldFilter("counted_as_evidence", "==", True))
        if after is not None:
            query = query.where(filter=firestore.FieldFilter("feedback_at", ">", after))
        if until is not None:
            query = query.where(filter=firestore.FieldFilter("feedback_at", "<=", until))
        query = query.order_by("feedback_at").limit(self._settings.max_rows)
        try:
            snapshots = list(query.stream(timeout=self._timeout))
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(f"cannot read the answered predictions: {exc}") from exc
        found = []
        for snapshot in snapshots:
            data = snapshot.to_dict()
            if data.get("user_answer") is None or not data.get("text"):
                continue
            answered = data["feedback_at"].astimezone(UTC)
            # A plain datetime: the client's timestamps are a subclass that compares and formats differently.
            answered_at = datetime(*answered.timetuple()[:6], answered.microsecond, tzinfo=UTC)
            found.append(Answer(snapshot.id, data["text"], bool(data["user_answer"]), answered_at))
        return found

    def _exists(self, blob: Any) -> bool:
        from google.api_core import exceptions as gexc

        try:
            return blob.exists(timeout=self._timeout)
        except gexc.GoogleAPIError as exc:
            raise ExportUnavailable(f"cannot read gs://{self._location.bucket}/{blob.name}: {exc}") from exc

    def _write(self, blob: Any, data: bytes) -> bool:
        """True when this tick created the file; False when it already existed (the real GCS checks
        if_generation_match=0; the emulator ignores it, where the exists check before is what holds)."""
        from google.api_core import exceptions as gexc

        try:
            blob.upload_from_string(
                data, content_type="application/x-ndjson", if_generation_match=0, timeout=self._timeout
            )
        except gexc.PreconditionFailed:
            return False
        except gexc.GoogleAPIError as exc:
            raise ExportUnavailable(f"cannot write gs://{self._location.bucket}/{blob.name}: {exc}") from exc
        return True

    def _recover(self, blob: Any, uri: str, read: FeedbackExport, now: datetime, why: str) -> ExportResult:
        from google.api_core import exceptions as gexc

        try:
            newest, rows = newest_answer(blob.download_as_bytes(timeout=self._timeout))
        except gexc.GoogleAPIError as exc:
            raise ExportUnavailable(f"cannot read {uri}: {exc}") from exc
        done = FeedbackExport(watermark=newest, at=now, uri=uri, rows=rows)
        self._store.apply(lambda state, _: exported(state, read, done, f"{why}: watermark advanced past it"))
        logger.warning("%s: %s; the watermark advanced to %s", uri, why, newest.isoformat())
        return ExportResult(False, f"{why}: {uri} kept, no second file", uri, rows)
