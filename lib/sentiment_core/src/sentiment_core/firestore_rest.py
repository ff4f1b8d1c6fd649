"""predict's write path to Firestore over its REST API, with the standard library only.

google-cloud-firestore costs 0.45-0.7 s to import, more than everything else predict does at cold start
(bench/coldstart.py). predict needs a single call, `documents:commit`, so it speaks it directly; feedback,
which reads and queries, keeps the client library. Same documents, same counters, same atomic batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sentiment_core.evidence import (
    DEFAULT_MAX_PER_CLIENT,
    EVIDENCE_CLIENTS,
    MAX_CONTENDED,
    counts_as_evidence,
    evidence_client_id,
)
from sentiment_core.monitoring import MonitorCounts
from sentiment_core.records import (
    COUNTER_FIELDS,
    COUNTER_SHARDS,
    COUNTER_WINDOWS,
    NUM_SHARDS,
    PREDICTIONS,
    WINDOW_FIELDS,
    Counts,
    Prediction,
    PredictionsExist,
    StoreUnavailable,
    WindowCounts,
    window_document_id,
    window_hour,
)

PRODUCTION_ENDPOINT = "https://firestore.googleapis.com"
METADATA_TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
_RETRYABLE = {429, 500, 502, 503, 504}


def encode_value(value: Any) -> dict[str, Any]:
    """A Python value as a Firestore REST `Value`."""
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, datetime):
        return {"timestampValue": value.isoformat().replace("+00:00", "Z")}
    raise TypeError(f"cannot store {type(value).__name__} in Firestore")


def decode_value(value: dict[str, Any]) -> Any:
    """A Firestore REST `Value` of the kinds encode_value writes, as the Python value."""
    (kind, raw), *_ = value.items()
    if kind == "nullValue":
        return None
    if kind == "integerValue":
        return int(raw)
    if kind == "doubleValue":
        return float(raw)  # NaN and infinities arrive as strings
    if kind == "timestampValue":
        return datetime.fromisoformat(raw)
    if kind in ("booleanValue", "stringValue"):
        return raw
    raise TypeError(f"cannot read a Firestore {kind}")


class MetadataTokenSource:
    """Access tokens of the instance's service account from the metadata server, cached until near expiry."""

    def __init__(self, url: str = METADATA_TOKEN_URL, timeout_s: float = 2.0) -> None:
        self._url = url
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires_at:
                request = urllib.request.Request(self._url, headers={"Metadata-Flavor": "Google"})
                try:
                    with urllib.request.urlopen(request, timeout=self._timeout) as response:
                        data = json.loads(response.read())
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    raise StoreUnavailable(f"no access token from the metadata server: {exc}") from exc
                self._token = data["access_token"]
                self._expires_at = time.monotonic() + max(0, int(data.get("expires_in", 0)) - 60)
            return self._token


class RestPredictionWriter:
    """Creates prediction records and bumps their counters in one atomic commit, within timeout_s."""

    def __init__(
        self,
        project: str,
        database: str,
        timeout_s: float,
        *,
        endpoint: str | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
        if endpoint is None:
            endpoint = f"http://{emulator}" if emulator else PRODUCTION_ENDPOINT
        if token is None:
            token = (lambda: "owner") if emulator else MetadataTokenSource()
        self._database = f"projects/{project}/databases/{database}"
        parsed = urllib.parse.urlsplit(endpoint)
        self._scheme, self._host = parsed.scheme, parsed.netloc
        base = f"{parsed.path.rstrip('/')}/v1/{self._database}/documents"
        self._commit_path, self._batch_get_path = f"{base}:commit", f"{base}:batchGet"
        self._timeout = timeout_s
        self._token = token
        # One keep-alive connection per serving thread: a TLS handshake per request would cost more than the
        # whole prediction.
        self._local = threading.local()

    def save_predictions(
        self,
        predictions: Sequence[Prediction],
        request_sha256: str | None = None,
        max_per_client: int = DEFAULT_MAX_PER_CLIENT,
    ) -> list[Prediction]:
        """Atomic: every record and its counter increments, or nothing; a replayed commit creates nothing twice.

        Records are created only where no document has their id. With request_sha256 (an idempotent request,
        ids derived from its key) a record that already exists raises PredictionsExist: the caller reads
        what is stored and decides whether it is this request's. Without it (random ids) an existing record
        can only be this call's own earlier attempt whose answer was lost.

        A prediction answered at once by a known client (`client_fingerprint`) counts as evidence only while
        that client has fewer than max_per_client counted answers for the version's predictions of that hour
        (sentiment_core.evidence): its cap counter is read first and its increment guarded by what was read.
        After MAX_CONTENDED lost races for that counter the answer is stored without counting as evidence.
        Returns the records as stored, `counted_as_evidence` decided.
        """
        deadline = time.monotonic() + self._timeout
        maybe_committed = False  # an earlier attempt may have committed though its answer was lost
        contended = 0
        while True:
            cap = max_per_client if contended < MAX_CONTENDED else 0
            try:
                stored, counted = self._decide_evidence(predictions, cap, deadline)
                writes = self._record_writes(stored, request_sha256)
                writes += [self._count_client(name, update_time, n) for name, (update_time, n) in counted.items()]
                self._commit({"writes": writes}, request_sha256 is None, deadline, maybe_committed)
            except _Contended as race:
                maybe_committed = maybe_committed or race.attempts > 1
                contended += 1
                continue  # the same client answered at the same time: decide again on what is counted now
            return stored

    def _record_writes(self, predictions: Sequence[Prediction], request_sha256: str | None) -> list[dict[str, Any]]:
        """The records' creations and their counters' increments."""
        writes = [self._create(p, request_sha256) for p in predictions]
        by_version: dict[str, Counts] = {}
        by_window: dict[tuple[str, datetime], WindowCounts] = {}
        monitored: dict[tuple[str, datetime], MonitorCounts] = {}
        for p in predictions:
            counted = Counts(1, int(p.user_answer is not None), int(bool(p.correct)))
            by_version[p.model_version] = by_version.get(p.model_version, Counts()) + counted
            window = (p.model_version, window_hour(p.created_at))
            by_window[window] = by_window.get(window, WindowCounts()) + WindowCounts.of(p)
            monitored[window] = monitored.get(window, MonitorCounts()) + MonitorCounts.of(
                p.probability, p.text, p.known_fraction, positive=p.model_answer
            )
        writes += [self._increment(version, counts) for version, counts in by_version.items()]
        writes += [
            self._window_increment(version, hour, counts, monitored[version, hour])
            for (version, hour), counts in by_window.items()
        ]
        return writes

    def _decide_evidence(
        self, predictions: Sequence[Prediction], max_per_client: int, deadline: float
    ) -> tuple[list[Prediction], dict[str, tuple[str, int]]]:
        """The predictions with `counted_as_evidence` decided for those a known client answered, and the cap
        counters to increment: document name -> (the update time read, answers now counted).

        A cap counter that does not exist yet is created first (counted 0, in a commit of its own), so that the
        records' commit can always be guarded by an update time: a race then fails as FAILED_PRECONDITION, never
        as ALREADY_EXISTS, which would be taken for a stored record.
        """
        answered = [p for p in predictions if p.user_answer is not None and p.client_fingerprint is not None]
        if not answered:
            return list(predictions), {}
        names = {p.id: self._document(EVIDENCE_CLIENTS, _client_counter_id(p)) for p in answered}
        counters = self._read_counters(sorted(set(names.values())), deadline)
        missing = {name: p for p in answered if (name := names[p.id]) not in counters}
        if missing:
            self._create_counters(missing, deadline)
            counters = self._read_counters(sorted(set(names.values())), deadline)
        increments: dict[str, int] = {}
        decided: dict[str, bool] = {}
        for p in answered:
            name = names[p.id]
            if name not in counters:  # created and gone again (deleted by hand): decide on the next attempt
                raise _Contended(1)
            counted_before = counters[name][0] + increments.get(name, 0)
            decided[p.id] = counts_as_evidence(counted_before, max_per_client)
            increments[name] = increments.get(name, 0) + int(decided[p.id])
        stored = [
            dataclasses.replace(p, counted_as_evidence=decided[p.id]) if p.id in decided else p for p in predictions
        ]
        return stored, {name: (counters[name][1], n) for name, n in increments.items() if n}

    def _read_counters(self, names: list[str], deadline: float) -> dict[str, tuple[int, str]]:
        """The cap counters that exist: document name -> (answers counted, update time)."""
        status, payload, _ = self._call(self._batch_get_path, json.dumps({"documents": names}).encode(), deadline)
        if status != 200:
            raise StoreUnavailable(
                f"Firestore refused the read: HTTP {status} {payload[:300].decode(errors='replace')}"
            )
        found = {}
        for item in json.loads(payload):
            document = item.get("found")
            if document:
                counted = decode_value(document.get("fields", {}).get("counted", {"integerValue": "0"}))
                found[document["name"]] = (int(counted or 0), document["updateTime"])
        return found

    def _create_counters(self, missing: dict[str, Prediction], deadline: float) -> None:
        """Each missing cap counter at zero; one created meanwhile by another answer is as good (409)."""
        for name, p in missing.items():
            fields = {
                "model_version": p.model_version,
                "hour": window_hour(p.created_at),
                "client_fingerprint": p.client_fingerprint,
                "counted": 0,
            }
            write = {
                "update": {"name": name, "fields": {k: encode_value(v) for k, v in fields.items()}},
                "currentDocument": {"exists": False},
            }
            status, payload, _ = self._call(self._commit_path, json.dumps({"writes": [write]}).encode(), deadline)
            if status not in (200, 409):
                raise StoreUnavailable(
                    f"Firestore refused the commit: HTTP {status} {payload[:300].decode(errors='replace')}"
                )

    def _count_client(self, name: str, update_time: str, answers: int) -> dict[str, Any]:
        """The cap counter's increment, only if nobody changed it since it was read."""
        return {
            "update": {"name": name, "fields": {}},
            "updateMask": {"fieldPaths": []},
            "updateTransforms": [{"fieldPath": "counted", "increment": {"integerValue": str(answers)}}],
            "currentDocument": {"updateTime": update_time},
        }

    def count_server_error(self, version: str, at: datetime) -> None:
        """One server error of `version` in its window counter; best effort, never raises.

        The request that failed answers a 5xx whatever happens here: a counter that cannot be written only
        makes the rollout's server-error check a little blinder, it must not change the answer.
        """
        body = {"writes": [self._window_increment(version, window_hour(at), WindowCounts(server_errors=1))]}
        with contextlib.suppress(StoreUnavailable):
            self._call(self._commit_path, json.dumps(body).encode())

    def read_predictions(
        self, ids: Sequence[str], deadline: float | None = None
    ) -> list[tuple[Prediction, str | None] | None]:
        """Each stored prediction with the request_sha256 it was stored with, or None where there is none.

        deadline: a monotonic time to finish by (default: the store's bound from now).
        """
        names = [self._document(PREDICTIONS, i) for i in ids]
        status, payload, _ = self._call(self._batch_get_path, json.dumps({"documents": names}).encode(), deadline)
        if status != 200:
            raise StoreUnavailable(
                f"Firestore refused the read: HTTP {status} {payload[:300].decode(errors='replace')}"
            )
        found: dict[str, tuple[Prediction, str | None]] = {}
        for item in json.loads(payload):
            document = item.get("found")
            if document:
                data = {k: decode_value(v) for k, v in document.get("fields", {}).items()}
                document_id = document["name"].rsplit("/", 1)[1]
                found[document_id] = (Prediction.from_document(document_id, data), data.get("request_sha256"))
        return [found.get(i) for i in ids]

    def _document(self, collection: str, document_id: str) -> str:
        return f"{self._database}/documents/{collection}/{document_id}"

    def _create(self, prediction: Prediction, request_sha256: str | None) -> dict[str, Any]:
        document = prediction.to_document()
        if request_sha256 is not None:
            document["request_sha256"] = request_sha256
        fields = {k: encode_value(v) for k, v in document.items()}
        return {
            "update": {"name": self._document(PREDICTIONS, prediction.id), "fields": fields},
            "currentDocument": {"exists": False},
        }

    def _increment(self, version: str, counts: Counts) -> dict[str, Any]:
        shard = self._document(COUNTER_SHARDS, f"{version}--{random.randrange(NUM_SHARDS)}")
        return _increments(shard, {"model_version": version}, counts, COUNTER_FIELDS)

    def _window_increment(
        self, version: str, hour: datetime, counts: WindowCounts, monitored: MonitorCounts | None = None
    ) -> dict[str, Any]:
        """The window counter's increments; with `monitored`, monitoring's histograms and confidence sum too
        (sentiment_core.monitoring), in the same write."""
        shard = self._document(COUNTER_WINDOWS, window_document_id(version, hour, random.randrange(NUM_SHARDS)))
        write = _increments(shard, {"model_version": version, "hour": hour}, counts, WINDOW_FIELDS)
        if monitored is not None:
            write["updateTransforms"] += [
                {"fieldPath": field, "increment": encode_value(value)}
                for field, value in monitored.increments().items()
            ]
        return write

    def close(self) -> None:
        """Close this thread's connection (instances live as long as the process; tests close theirs)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            factory = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            connection = factory(self._host, timeout=timeout)
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _post(self, path: str, data: bytes, timeout: float) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token()}"}
        connection = self._connection(timeout)
        try:
            connection.request("POST", path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # a broken or timed-out connection is not reused
            self._local.connection = None
            raise

    def _call(self, path: str, data: bytes, deadline: float | None = None) -> tuple[int, bytes, int]:
        """POST until an answer that is not transient, or the deadline (StoreUnavailable); status, body, attempts."""
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        attempt, delay = 0, 0.05
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(f"Firestore did not answer within {self._timeout:g} s")
            try:
                status, payload = self._post(path, data, remaining)
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, refused connections
                if deadline - time.monotonic() <= 0:
                    raise StoreUnavailable(f"Firestore did not answer: {exc}") from exc
            else:
                # 409 is ABORTED (contention, transient) as well as ALREADY_EXISTS (final).
                if status not in _RETRYABLE and not (status == 409 and _error_status(payload) == "ABORTED"):
                    return status, payload, attempt
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    def _commit(
        self, body: dict[str, Any], existing_is_ours: bool, deadline: float | None = None, retried: bool = False
    ) -> None:
        """documents:commit, retrying transient failures until the deadline.

        retried: an earlier commit of the same records may have gone through though its answer was lost.
        """
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        status, payload, attempts = self._call(self._commit_path, json.dumps(body).encode(), deadline)
        if status == 200:
            return
        if status == 409:  # ALREADY_EXISTS: a record with one of these ids is stored
            if existing_is_ours and (attempts > 1 or retried):
                return  # our earlier attempt committed and its answer was lost: the records exist once
            raise PredictionsExist("a prediction with one of these ids is stored already", deadline)
        if status == 400 and _error_status(payload) == "FAILED_PRECONDITION":
            raise _Contended(attempts)  # a cap counter changed since it was read
        raise StoreUnavailable(f"Firestore refused the commit: HTTP {status} {payload[:300].decode(errors='replace')}")


class _Contended(Exception):
    """A guarded write found its document changed since it was read: decide again (attempts: commits sent)."""

    def __init__(self, attempts: int) -> None:
        super().__init__("changed since read")
        self.attempts = attempts


def _client_counter_id(prediction: Prediction) -> str:
    return evidence_client_id(prediction.model_version, prediction.created_at, str(prediction.client_fingerprint))


def _increments(name: str, fields: dict[str, Any], counts: Any, counted: Sequence[str]) -> dict[str, Any]:
    """A write that sets `fields` and adds the non-zero `counted` fields of `counts` (no read, no lock)."""
    return {
        "update": {"name": name, "fields": {k: encode_value(v) for k, v in fields.items()}},
        "updateMask": {"fieldPaths": list(fields)},
        "updateTransforms": [
            {"fieldPath": field, "increment": {"integerValue": str(getattr(counts, field))}}
            for field in counted
            if getattr(counts, field)
        ],
    }


def _error_status(payload: bytes) -> str | None:
    try:
        return json.loads(payload)["error"]["status"]
    except (ValueError, KeyError, TypeError):
        return None
