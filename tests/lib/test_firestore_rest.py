"""The REST writer's production path (metadata-server token, retries, replay) against a local fake server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sentiment_core.firestore_rest import MetadataTokenSource, RestPredictionWriter, decode_value, encode_value
from sentiment_core.records import Prediction, PredictionsExist, StoreUnavailable

# Firestore's REST error status for each HTTP status the fake answers (409 is ALREADY_EXISTS unless said).
ERROR_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 409: "ALREADY_EXISTS", 503: "UNAVAILABLE"}


class FakeGoogle:
    """Scripted answers for the metadata server and documents:commit; records what it was sent."""

    def __init__(self) -> None:
        self.commit_statuses: list[int | tuple[int, str]] = []
        self.batch_get_answer: list[dict] = []
        self.requests: list[tuple[str, dict, bytes]] = []
        self.token_requests = 0


@pytest.fixture
def fake() -> Iterator[tuple[FakeGoogle, str]]:
    state = FakeGoogle()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            state.token_requests += 1
            if self.headers.get("Metadata-Flavor") != "Google":
                self._answer(403, {})
                return
            self._answer(200, {"access_token": f"token-{state.token_requests}", "expires_in": 3600})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.path, dict(self.headers), body))
            if self.path.endswith(":batchGet"):
                self._answer(200, state.batch_get_answer)
                return
            scripted = state.commit_statuses.pop(0) if state.commit_statuses else 200
            status, error = scripted if isinstance(scripted, tuple) else (scripted, ERROR_STATUS.get(scripted))
            self._answer(
                status, {"error": {"code": status, "status": error}} if status != 200 else {"writeResults": []}
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def prediction(user_answer: bool | None = None) -> Prediction:
    return Prediction(
        id="a" * 32,
        text="great food",
        probability=0.9,
        model_answer=True,
        user_answer=user_answer,
        model_name="yelp-sentiment",
        model_version="3",
        mlflow_run_id="run",
        inference_elapsed=0.001,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )


@pytest.fixture
def writer() -> Iterator:
    made: list[RestPredictionWriter] = []

    def make(base: str, timeout: float = 2.0) -> RestPredictionWriter:
        token = MetadataTokenSource(url=f"{base}/computeMetadata/v1/instance/service-accounts/default/token")
        made.append(RestPredictionWriter("proj", "(default)", timeout, endpoint=base, token=token))
        return made[-1]

    yield make
    for rest in made:
        rest.close()


def test_save_predictions_sends_one_atomic_commit_with_its_window_counter_and_a_metadata_token(fake, writer) -> None:
    state, base = fake

    writer(base).save_predictions([prediction(user_answer=True)])

    ((path, headers, body),) = state.requests
    commit = json.loads(body)
    assert path == "/v1/projects/proj/databases/(default)/documents:commit"
    assert headers["Authorization"] == "Bearer token-1"
    create, increment, window = commit["writes"]
    assert create["currentDocument"] == {"exists": False}
    assert create["update"]["name"].endswith("/documents/predictions/" + "a" * 32)
    assert create["update"]["fields"]["created_at"] == {"timestampValue": "2026-01-02T03:04:05.678000Z"}
    assert create["update"]["fields"]["correct"] == {"booleanValue": True}
    assert increment["updateMask"] == {"fieldPaths": ["model_version"]}
    assert {t["fieldPath"]: t["increment"]["integerValue"] for t in increment["updateTransforms"]} == {
        "predictions": "1",
        "feedback": "1",
        "correct": "1",
    }
    assert re.fullmatch(r".*/documents/counter_windows/3--2026010203--([0-9]|1[0-5])", window["update"]["name"])
    assert window["update"]["fields"] == {
        "model_version": {"stringValue": "3"},
        "hour": {"timestampValue": "2026-01-02T03:00:00Z"},
    }
    assert window["updateMask"] == {"fieldPaths": ["model_version", "hour"]}
    assert {t["fieldPath"]: t["increment"] for t in window["updateTransforms"]} == {
        "predictions": {"integerValue": "1"},
        "positive": {"integerValue": "1"},
        "feedback": {"integerValue": "1"},
        "correct": {"integerValue": "1"},
        # Monitoring, in the same write: probability 0.9 in bin 18 of 20, 10 characters in the first length bin,
        # and its confidence max(p, 1 - p).
        "probability_bin_18": {"integerValue": "1"},
        "length_bin_0": {"integerValue": "1"},
        "confidence_sum": {"doubleValue": 0.9},
    }


def test_count_server_error_commits_one_increment_and_never_raises(fake, writer) -> None:
    state, base = fake
    state.commit_statuses = [200, 403]
    rest = writer(base)

    rest.count_server_error("3", datetime(2026, 1, 2, 3, 59, tzinfo=UTC))
    rest.count_server_error("3", datetime(2026, 1, 2, 4, tzinfo=UTC))  # refused: the request's 5xx is unchanged

    (write,) = json.loads(state.requests[0][2])["writes"]
    assert "/counter_windows/3--2026010203--" in write["update"]["name"]
    assert write["updateTransforms"] == [{"fieldPath": "server_errors", "increment": {"integerValue": "1"}}]
    assert len(state.requests) == 2


def test_token_is_cached_across_commits(fake, writer) -> None:
    state, base = fake
    rest = writer(base)

    rest.save_predictions([prediction()])
    rest.save_predictions([prediction()])

    assert state.token_requests == 1


def test_transient_errors_are_retried_and_a_replayed_commit_counts_once(fake, writer) -> None:
    """503, then 409 ALREADY_EXISTS: the first attempt had committed, so the save succeeded exactly once."""
    state, base = fake
    state.commit_statuses = [503, 409]

    writer(base).save_predictions([prediction()])

    assert len(state.requests) == 2


def test_read_predictions_decodes_stored_records_and_their_fingerprint_and_none_where_missing(fake, writer) -> None:
    state, base = fake
    stored = prediction(user_answer=True)
    fields = {k: encode_value(v) for k, v in stored.to_document().items()} | {"request_sha256": encode_value("f")}
    name = "projects/proj/databases/(default)/documents/predictions/"
    state.batch_get_answer = [
        {"missing": name + "b" * 32},
        {"found": {"name": name + "a" * 32, "fields": fields}},
    ]

    found = writer(base).read_predictions(["a" * 32, "b" * 32])

    ((path, _, body),) = state.requests
    assert path.endswith("/documents:batchGet")
    assert json.loads(body) == {"documents": [name + "a" * 32, name + "b" * 32]}
    assert found == [(stored, "f"), None]


def test_read_predictions_past_its_deadline_is_store_unavailable_without_asking(fake, writer) -> None:
    import time

    state, base = fake

    with pytest.raises(StoreUnavailable):
        writer(base).read_predictions(["a" * 32], deadline=time.monotonic() - 1)

    assert state.requests == []


def test_aborted_commit_is_retried(fake, writer) -> None:
    """409 ABORTED is contention, not a stored record: tried again until it commits."""
    state, base = fake
    state.commit_statuses = [(409, "ABORTED"), (409, "ABORTED")]

    writer(base).save_predictions([prediction()])

    assert len(state.requests) == 3


def test_existing_record_on_the_first_attempt_raises_predictions_exist(fake, writer) -> None:
    state, base = fake
    state.commit_statuses = [409]

    with pytest.raises(PredictionsExist):
        writer(base).save_predictions([prediction()])


def test_idempotent_save_leaves_an_existing_record_to_the_caller_even_after_a_retry(fake, writer) -> None:
    """With a request fingerprint the ids come from a key another request may share: the caller must look."""
    state, base = fake
    state.commit_statuses = [503, 409]

    with pytest.raises(PredictionsExist):
        writer(base).save_predictions([prediction()], request_sha256="f" * 64)

    create = json.loads(state.requests[0][2])["writes"][0]
    assert create["update"]["fields"]["request_sha256"] == {"stringValue": "f" * 64}


@pytest.mark.parametrize("status", [400, 403])
def test_refused_commit_raises_store_unavailable(fake, writer, status: int) -> None:
    state, base = fake
    state.commit_statuses = [status]

    with pytest.raises(StoreUnavailable, match=f"HTTP {status}"):
        writer(base).save_predictions([prediction()])


def test_unreachable_firestore_fails_within_the_bound() -> None:
    from localdev.services import free_port

    rest = RestPredictionWriter("p", "(default)", 0.5, endpoint=f"http://127.0.0.1:{free_port()}", token=lambda: "t")

    with pytest.raises(StoreUnavailable):
        rest.save_predictions([prediction()])


def test_metadata_server_missing_is_store_unavailable() -> None:
    from localdev.services import free_port

    token = MetadataTokenSource(url=f"http://127.0.0.1:{free_port()}/token", timeout_s=0.5)

    with pytest.raises(StoreUnavailable, match="metadata server"):
        token()


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, {"nullValue": None}),
        (True, {"booleanValue": True}),
        (3, {"integerValue": "3"}),
        (0.25, {"doubleValue": 0.25}),
        ("é", {"stringValue": "é"}),
    ],
)
def test_encode_value_types(value, encoded) -> None:
    assert encode_value(value) == encoded


@pytest.mark.parametrize(
    "value", [None, True, 3, 0.25, "é", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)], ids=repr
)
def test_decode_value_reads_what_encode_value_writes(value) -> None:
    assert decode_value(encode_value(value)) == value


def test_encode_value_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        encode_value(object())
