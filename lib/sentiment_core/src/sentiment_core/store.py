"""Firestore through the client library: feedback's reads, conditional writes and queries; the rollout's evidence."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore

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


class Store:
    """All reads and writes of the serving path, each bounded by timeout_s."""

    def __init__(self, client: firestore.Client, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        # Retry transient errors, but never past the bound: a request must not hang past the function timeout.
        self._retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)

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
            version = prediction.model_version
            batch.set(self._shard(version), _increments({"model_version": version}, counts, COUNTER_FIELDS), merge=True)
            # The window of the hour the prediction was made in, whenever the answer comes: a window's feedback
            # is about the predictions made in it, so both versions' feedback covers the same traffic.
            hour = window_hour(prediction.created_at)
            window = self._client.collection(COUNTER_WINDOWS).document(
                window_document_id(version, hour, random.randrange(NUM_SHARDS))
            )
            increments = _increments(
                {"model_version": version, "hour": hour},
                WindowCounts(feedback=1, correct=counts.correct),
                WINDOW_FIELDS,
            )
            batch.set(window, increments, merge=True)
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

    def _shard(self, version: str) -> Any:
        return self._client.collection(COUNTER_SHARDS).document(f"{version}--{random.randrange(NUM_SHARDS)}")


def _increments(fields: dict[str, Any], counts: Any, counted: tuple[str, ...]) -> dict[str, Any]:
    """`fields` plus an increment of each non-zero `counted` field of `counts`, for a merge set."""
    return fields | {name: firestore.Increment(getattr(counts, name)) for name in counted if getattr(counts, name)}


def window_evidence(client: firestore.Client, version: str, since: datetime, timeout_s: float = 10.0) -> VersionCounts:
    """What `version` did from the UTC hour of `since` on, summed over its window counters.

    One range query over document ids (`{version}--{hour}` sorts in time order): it reads the version's
    existing counters of those hours, at most hours x NUM_SHARDS documents, never a prediction, and needs no
    composite index. Two versions read with the same `since` cover the same hours, so the same window.
    """
    windows = client.collection(COUNTER_WINDOWS)
    # "~" sorts after every digit: the upper bound closes the range on this version's hour keys.
    first, end = windows.document(window_key(version, since)), windows.document(f"{version}--~")
    query = windows.where(filter=firestore.FieldFilter("__name__", ">=", first)).where(
        filter=firestore.FieldFilter("__name__", "<", end)
    )
    totals = dict.fromkeys(WINDOW_FIELDS, 0)
    retry = Retry(predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=timeout_s)
    try:
        for counter in query.stream(retry=retry, timeout=timeout_s):
            data = counter.to_dict()
            if data.get("model_version") != version:
                continue  # an id of another version that happens to share the prefix (ids are free text)
            for field in WINDOW_FIELDS:
                totals[field] += int(data.get(field, 0))
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    return VersionCounts(version=version, **totals)
