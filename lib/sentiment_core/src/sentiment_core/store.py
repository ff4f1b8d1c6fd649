"""Firestore through the client library: feedback's reads, conditional writes and queries; the rollout's evidence."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore

from sentiment_core.evidence import (
    DEFAULT_MAX_PER_CLIENT,
    EVIDENCE_CLIENTS,
    MAX_CONTENDED,
    counts_as_evidence,
    evidence_client_id,
)
from sentiment_core.monitoring import InvalidReference, Reference, Window
from sentiment_core.records import (
    COUNTER_FIELDS,
    COUNTER_SHARDS,
    COUNTER_WINDOWS,
    NUM_SHARDS,
    PREDICTIONS,
    WINDOW_FIELDS,
    Counts,
    FeedbackConflict,
    NotFound,
    Prediction,
    StoreUnavailable,
    WindowCounts,
    decode_page_token,
    encode_page_token,
    window_document_id,
    window_hour,
    window_key,
)
from sentiment_core.rollout import VersionCounts

logger = logging.getLogger("sentiment.store")
T = TypeVar("T")


class Store:
    """All reads and writes of the serving path, each bounded by timeout_s."""

    def __init__(self, client: firestore.Client, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        # Retry transient errors, but never past the bound: a request must not hang past the function timeout.
        self._retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)

    def record_feedback(
        self,
        prediction_id: str,
        answer: bool,
        fingerprint: Callable[[datetime], str] | None = None,
        max_per_client: int = DEFAULT_MAX_PER_CLIENT,
        attempts: int = MAX_CONTENDED + 2,
    ) -> tuple[Prediction, bool]:
        """Store a user's answer once; returns the prediction and whether anything changed.

        fingerprint: the answering client's fingerprint for a prediction made at a given time
        (sentiment_core.evidence); the answer counts as evidence only while that client has fewer than
        max_per_client counted answers for the version's predictions of that hour. None: an answer of no known
        client, stored and counted in the statistics but never as evidence.

        Optimistic, not a transaction: read the record and the client's cap counter, then commit the answer, its
        counter increments and the cap counter in one batch guarded by the record's and the cap counter's update
        times. A concurrent answer makes a precondition fail and we read again; after MAX_CONTENDED such races the
        answer is stored without counting as evidence (no cap counter in the batch). Transactions would lock the
        counter shards they increment, and under load they queue and time out.
        """
        reference = self._client.collection(PREDICTIONS).document(prediction_id)
        for attempt in range(attempts):
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
            version = prediction.model_version
            client = None if fingerprint is None else fingerprint(prediction.created_at)
            batch = self._client.batch()
            counted = False
            if client is not None:
                cap = max_per_client if attempt < MAX_CONTENDED else 0
                counted = self._count_client(batch, version, prediction.created_at, client, cap)
            updated = dataclasses.replace(
                prediction, user_answer=answer, client_fingerprint=client, counted_as_evidence=counted
            )
            batch.update(
                reference,
                {
                    "user_answer": answer,
                    "has_feedback": True,
                    "correct": updated.correct,
                    "feedback_at": datetime.now(UTC),
                    "client_fingerprint": client,
                    "counted_as_evidence": counted,
                },
                option=self._client.write_option(last_update_time=snapshot.update_time),
            )
            counts = Counts(0, 1, int(bool(updated.correct)))
            batch.set(self._shard(version), _increments({"model_version": version}, counts, COUNTER_FIELDS), merge=True)
            # The window of the hour the prediction was made in, whenever the answer comes: a window's feedback
            # is about the predictions made in it, so both versions' feedback covers the same traffic.
            hour = window_hour(prediction.created_at)
            window = self._client.collection(COUNTER_WINDOWS).document(
                window_document_id(version, hour, random.randrange(NUM_SHARDS))
            )
            increments = _increments(
                {"model_version": version, "hour": hour},
                WindowCounts(feedback=1, correct=counts.correct) + WindowCounts.evidence_of(updated),
                WINDOW_FIELDS,
            )
            batch.set(window, increments, merge=True)
            try:
                batch.commit(retry=self._retry, timeout=self._timeout)
            except (gexc.FailedPrecondition, gexc.AlreadyExists):
                continue  # someone answered (or the same client did) between our read and our write: read again
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            return updated, True
        raise StoreUnavailable(f"prediction {prediction_id} kept changing during {attempts} attempts")

    def _count_client(self, batch: Any, version: str, created_at: datetime, client: str, cap: int) -> bool:
        """Whether the client's answer counts as evidence; if so, its cap counter's increment joins `batch`.

        The increment is guarded by what was read (the counter's update time, or its absence), so two answers of
        one client at once cannot both take the last place under the cap. Over the cap nothing is written: a
        script that keeps answering does not contend with anyone.
        """
        reference = self._client.collection(EVIDENCE_CLIENTS).document(evidence_client_id(version, created_at, client))
        try:
            snapshot = reference.get(retry=self._retry, timeout=self._timeout)
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        counted = int(snapshot.get("counted") or 0) if snapshot.exists else 0
        if not counts_as_evidence(counted, cap):
            return False
        if snapshot.exists:
            option = self._client.write_option(last_update_time=snapshot.update_time)
            batch.update(reference, {"counted": firestore.Increment(1)}, option=option)
        else:
            identity = {"model_version": version, "hour": window_hour(created_at), "client_fingerprint": client}
            batch.create(reference, identity | {"counted": 1})
        return True

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

    def _shard(self, version: str) -> Any:
        return self._client.collection(COUNTER_SHARDS).document(f"{version}--{random.randrange(NUM_SHARDS)}")


def _increments(fields: dict[str, Any], counts: Any, counted: tuple[str, ...]) -> dict[str, Any]:
    """`fields` plus an increment of each non-zero `counted` field of `counts`, for a merge set."""
    return fields | {name: firestore.Increment(getattr(counts, name)) for name in counted if getattr(counts, name)}


def window_evidence(client: firestore.Client, version: str, since: datetime, timeout_s: float = 10.0) -> VersionCounts:
    """What `version` did from the UTC hour of `since` on, summed over its window counters.

    Two versions read with the same `since` cover the same hours, so the same window. Its feedback is the answers
    counted as evidence (at most EVIDENCE_MAX_PER_CLIENT per client and hour), not every answer stored.
    """
    totals = dict.fromkeys(WINDOW_FIELDS, 0)
    for data in _window_counters(client, version, since, timeout_s):
        for field in WINDOW_FIELDS:
            totals[field] += int(data.get(field, 0))
    return VersionCounts(
        version=version,
        predictions=totals["predictions"],
        positive=totals["positive"],
        feedback=totals["evidence_feedback"],
        correct=totals["evidence_correct"],
        server_errors=totals["server_errors"],
    )


def hourly_windows(
    client: firestore.Client, version: str, since: datetime, timeout_s: float = 10.0
) -> dict[datetime, Window]:
    """Monitoring's view of `version` from the UTC hour of `since` on: one Window per hour that has counters."""
    hours: dict[datetime, Window] = {}
    for data in _window_counters(client, version, since, timeout_s):
        hour = window_hour(data["hour"])
        hours[hour] = hours.get(hour, Window()) + Window.from_document(data)
    return dict(sorted(hours.items()))


def versions_with_windows(client: firestore.Client, since: datetime, timeout_s: float = 10.0) -> set[str]:
    """The versions that have a window counter from the UTC hour of `since` on (one query on `hour`)."""
    query = client.collection(COUNTER_WINDOWS).where(filter=firestore.FieldFilter("hour", ">=", window_hour(since)))
    retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)
    try:
        return {
            str(s.get("model_version")) for s in query.select(["model_version"]).stream(retry=retry, timeout=timeout_s)
        }
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise StoreUnavailable(str(exc)) from exc


def _window_counters(client: firestore.Client, version: str, since: datetime, timeout_s: float) -> list[dict[str, Any]]:
    """The version's counter documents from the UTC hour of `since` on.

    One range query over document ids (`{version}--{hour}` sorts in time order): at most hours x NUM_SHARDS
    documents, never a prediction, and no composite index.
    """
    windows = client.collection(COUNTER_WINDOWS)
    # "~" sorts after every digit: the upper bound closes the range on this version's hour keys.
    first, end = windows.document(window_key(version, since)), windows.document(f"{version}--~")
    query = windows.where(filter=firestore.FieldFilter("__name__", ">=", first)).where(
        filter=firestore.FieldFilter("__name__", "<", end)
    )
    retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)
    try:
        counters = [counter.to_dict() for counter in query.stream(retry=retry, timeout=timeout_s)]
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    # An id of another version can share the prefix (versions are free text): keep this version's own.
    return [data for data in counters if data.get("model_version") == version]


MONITORING_REFERENCES = "monitoring_references"


def save_reference(client: firestore.Client, version: str, reference: Reference, timeout_s: float = 10.0) -> None:
    """The version's reference, for the functions that compare live traffic with it; writing it again is harmless."""
    retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)
    try:
        client.collection(MONITORING_REFERENCES).document(version).set(
            {"model_version": version, **reference.to_dict()}, retry=retry, timeout=timeout_s
        )
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise StoreUnavailable(str(exc)) from exc


def read_references(client: firestore.Client, versions: set[str], timeout_s: float = 10.0) -> dict[str, Reference]:
    """The references of those versions that have one (a version staged before monitoring has none; an unreadable
    one is logged and compared with nothing, as a version without one)."""
    return _read_by_version(client, MONITORING_REFERENCES, versions, Reference.from_dict, InvalidReference, timeout_s)


def _read_by_version(
    client: firestore.Client,
    collection: str,
    versions: set[str],
    parse: Callable[[dict[str, Any]], T],
    unreadable: type[Exception] | tuple[type[Exception], ...],
    timeout_s: float,
) -> dict[str, T]:
    """`collection/{version}` of each version, parsed, in one batched read; missing and unreadable ones left out."""
    if not versions:
        return {}
    documents = client.collection(collection)
    retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)
    found: dict[str, T] = {}
    try:
        snapshots = client.get_all([documents.document(v) for v in sorted(versions)], retry=retry, timeout=timeout_s)
        for snapshot in snapshots:
            if not snapshot.exists:
                continue
            try:
                found[snapshot.id] = parse(snapshot.to_dict())
            except unreadable as exc:
                logger.warning("%s/%s is unreadable, left out: %s", collection, snapshot.id, exc)
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    return found


# Each version's drift state as the scheduled evaluation last recorded it (registry_watcher's drift_watch.py writes
# it, on a change only); GET /monitoring shows it beside the live statistics.
DRIFT_STATES = "drift_states"


@dataclasses.dataclass(frozen=True)
class RecordedDrift:
    """`drift_states/{version}`: whether drift was last detected or resolved, why, and since when."""

    drift: bool
    reasons: tuple[str, ...]
    since: datetime

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> RecordedDrift:
        """KeyError, TypeError or ValueError when the document lacks a field or holds one of another type."""
        drift, reasons, since = data["drift"], data["reasons"], data["since"]
        if not isinstance(drift, bool) or not isinstance(since, datetime) or not isinstance(reasons, list):
            raise TypeError("drift must be a boolean, reasons a list and since a timestamp")
        # A plain UTC datetime: the client library's timestamps are a subclass of datetime.
        return cls(drift, tuple(str(reason) for reason in reasons), datetime.fromtimestamp(since.timestamp(), UTC))


def read_drift_states(
    client: firestore.Client, versions: set[str], timeout_s: float = 10.0
) -> dict[str, RecordedDrift]:
    """The recorded drift states of those versions that have one (none before the first change is recorded)."""
    unreadable = (KeyError, TypeError, ValueError)  # another writer's format: shown as no recorded state
    return _read_by_version(client, DRIFT_STATES, versions, RecordedDrift.from_document, unreadable, timeout_s)
