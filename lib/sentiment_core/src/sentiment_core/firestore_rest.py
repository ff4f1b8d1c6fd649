"""predict's write path to Firestore over its REST API, with the standard library only.

google-cloud-firestore costs 0.45-0.7 s to import, more than everything else predict does at cold start
(bench/coldstart.py). predict needs a single call, `documents:commit`, so it speaks it directly; feedback,
which reads and queries, keeps the client library. Same documents, same counters, same atomic batch.
"""

from __future__ import annotations

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

from sentiment_core.records import (
    COUNTER_FIELDS,
    COUNTER_SHARDS,
    NUM_SHARDS,
    PREDICTIONS,
    Counts,
    Prediction,
    StoreUnavailable,
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
        self._path = f"{parsed.path.rstrip('/')}/v1/{self._database}/documents:commit"
        self._timeout = timeout_s
        self._token = token
        # One keep-alive connection per serving thread: a TLS handshake per request would cost more than the
        # whole prediction.
        self._local = threading.local()

    def save_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Atomic: every record and its counter increments, or nothing; a replayed commit creates nothing twice."""
        writes = [self._create(p) for p in predictions]
        by_version: dict[str, Counts] = {}
        for p in predictions:
            counted = Counts(1, int(p.user_answer is not None), int(bool(p.correct)))
            by_version[p.model_version] = by_version.get(p.model_version, Counts()) + counted
        writes += [self._increment(version, counts) for version, counts in by_version.items()]
        self._commit({"writes": writes}, replay_ok=True)

    def _document(self, collection: str, document_id: str) -> str:
        return f"{self._database}/documents/{collection}/{document_id}"

    def _create(self, prediction: Prediction) -> dict[str, Any]:
        fields = {k: encode_value(v) for k, v in prediction.to_document().items()}
        return {
            "update": {"name": self._document(PREDICTIONS, prediction.id), "fields": fields},
            "currentDocument": {"exists": False},
        }

    def _increment(self, version: str, counts: Counts) -> dict[str, Any]:
        shard = self._document(COUNTER_SHARDS, f"{version}--{random.randrange(NUM_SHARDS)}")
        return {
            "update": {"name": shard, "fields": {"model_version": encode_value(version)}},
            "updateMask": {"fieldPaths": ["model_version"]},
            "updateTransforms": [
                {"fieldPath": name, "increment": {"integerValue": str(getattr(counts, name))}}
                for name in COUNTER_FIELDS
                if getattr(counts, name)
            ],
        }

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

    def _post(self, data: bytes, timeout: float) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token()}"}
        connection = self._connection(timeout)
        try:
            connection.request("POST", self._path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # a broken or timed-out connection is not reused
            self._local.connection = None
            raise

    def _commit(self, body: dict[str, Any], replay_ok: bool) -> None:
        """POST documents:commit, retrying transient failures until the deadline."""
        deadline = time.monotonic() + self._timeout
        data = json.dumps(body).encode()
        attempt, delay = 0, 0.05
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(f"Firestore did not commit within {self._timeout:g} s")
            try:
                status, payload = self._post(data, remaining)
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, refused connections
                if deadline - time.monotonic() <= 0:
                    raise StoreUnavailable(f"Firestore did not answer: {exc}") from exc
            else:
                if status == 200:
                    return
                if status == 409 and attempt > 1 and replay_ok:
                    return  # our earlier attempt committed and its answer was lost: the records exist once
                if status not in _RETRYABLE:
                    detail = payload[:300].decode(errors="replace")
                    raise StoreUnavailable(f"Firestore refused the commit: HTTP {status} {detail}")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)
