"""predict's handler on the emulator (the real REST writer): when the model fails on a valid request (a 5xx,
nothing stored, a server error counted in the version's window; the failing model is a stand-in), and when a
request with explain is replayed by the model that made its predictions or by another (real exported graphs)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import flask
import numpy as np
import pytest

from sentiment_core import http
from sentiment_core.firestore_rest import RestPredictionWriter
from sentiment_core.rollout import VersionCounts
from sentiment_core.store import window_evidence
from tests.functions.conftest import load_function_module
from tests.support import PROJECT, SECRET

service = load_function_module("predict", "predict_service")


@dataclasses.dataclass(frozen=True)
class Manifest:
    model_name: str = "yelp-sentiment"
    model_version: str = "5"
    mlflow_run_id: str = "run-5"
    threshold: float = 0.5


class FailingModel:
    """A loaded model that answers `answer` to every text, or raises when it is None (NaN goes wrong too)."""

    manifest = Manifest()

    def __init__(self, answer: float | None) -> None:
        self.answer = answer

    def infer(self, texts: list[str]) -> tuple[np.ndarray, None]:
        if self.answer is None:
            raise RuntimeError("inference failed")
        return np.full(len(texts), self.answer, dtype=np.float32), None


@pytest.fixture
def writer(firestore_emulator, clean_db):
    rest = RestPredictionWriter(
        PROJECT, "(default)", 5.0, endpoint=f"http://{firestore_emulator.url}", token=lambda: "owner"
    )
    try:
        yield rest
    finally:
        rest.close()


@pytest.mark.parametrize(("answer", "raised"), [(None, RuntimeError), (float("nan"), http.ApiError)])
def test_model_failure_counts_a_server_error_in_the_versions_window_and_stores_nothing(
    writer, clean_db, answer: float | None, raised: type[Exception]
) -> None:
    started = datetime.now(UTC)
    app = flask.Flask(__name__)

    with app.test_request_context("/", method="POST", json={"text": "Good food."}), pytest.raises(raised):
        service.handle_predict(flask.request, FailingModel(answer), lambda: writer, SECRET.encode())

    assert window_evidence(clean_db, "5", started) == VersionCounts("5", server_errors=1)
    assert list(clean_db.collection("predictions").stream()) == []


def _served(version: str, run_id: str):
    """A real exported graph (a tiny random model) served by predict_model.Model, named version/run_id."""
    import torch

    from sentiment_core.manifest import Manifest
    from training import export, preprocess
    from training.model import FastTextClassifier

    predict_model = load_function_module("predict", "predict_model")
    vocabulary = preprocess.Vocabulary(features=("good", "food", "good food", "bad"))
    torch.manual_seed(0)
    model = FastTextClassifier(len(vocabulary), 4)
    metadata = export.ModelMetadata(run_id, "stars>=3", 0.5, "0")
    graph = export.build_onnx(model.eval(), vocabulary, metadata).SerializeToString()
    manifest = Manifest("yelp-sentiment", version, run_id, "0" * 64, 0.5, "2026-01-01T00:00:00Z")
    return predict_model.Model(manifest, graph)


@pytest.mark.parametrize(
    ("replayed_by", "explained"),
    [(("5", "run-5"), True), (("6", "run-6"), False), (("5", "run-5b"), False)],
    ids=["the-same-model-explains-again", "another-version-omits-it", "another-run-omits-it"],
)
def test_replay_with_explain_explains_only_when_the_serving_model_made_the_stored_prediction(
    writer, clean_db, replayed_by: tuple[str, str], explained: bool
) -> None:
    app = flask.Flask(__name__)
    body = {"texts": ["Good food.", "Bad."], "explain": True}
    headers = {"Idempotency-Key": "explain-replay"}

    def post(model) -> flask.Response:
        with app.test_request_context("/", method="POST", json=body, headers=headers):
            return service.handle_predict(flask.request, model, lambda: writer, SECRET.encode())

    first = post(_served("5", "run-5"))
    again = post(_served(*replayed_by))

    assert again.headers["Idempotent-Replayed"] == "true"
    original = [p["details"] for p in first.get_json()["predictions"]]
    replayed = [p["details"] for p in again.get_json()["predictions"]]
    assert all("explanation" in details for details in original)
    if explained:
        assert [d["explanation"] for d in replayed] == [d["explanation"] for d in original]
    else:
        assert all("explanation" not in details for details in replayed)
    assert [{k: v for k, v in d.items() if k != "explanation"} for d in replayed] == [
        {k: v for k, v in d.items() if k != "explanation"} for d in original
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"text": "Good."}, service.PredictRequest(["Good."], None, False, False)),
        ({"text": " Good. ", "explain": True}, service.PredictRequest(["Good."], None, False, True)),
        ({"texts": ["a", "b"], "explain": True}, service.PredictRequest(["a", "b"], None, True, True)),
        ({"texts": ["a"], "explain": False}, service.PredictRequest(["a"], None, True, False)),
    ],
)
def test_parse_body_reads_explain_with_a_text_or_a_batch(body, expected) -> None:
    assert service.parse_body(body) == expected


@pytest.mark.parametrize("days", [1, 30])
def test_stored_predictions_expire_the_retention_days_after_they_were_made(writer, clean_db, days: int) -> None:
    app = flask.Flask(__name__)

    with app.test_request_context("/", method="POST", json={"texts": ["Good food.", "Bad."]}):
        response = service.handle_predict(flask.request, FailingModel(0.9), lambda: writer, SECRET.encode(), days)

    assert response.status_code == 201
    stored = [snapshot.to_dict() for snapshot in clean_db.collection("predictions").stream()]
    assert len(stored) == 2
    assert [s["expire_at"] - s["created_at"] for s in stored] == [timedelta(days=days)] * 2


class ConstantModel(FailingModel):
    """A loaded model that answers `answer` for every text (positive at 0.9)."""


def post_answered(writer, forwarded_for: str, key: str | None = None, cap: int = 3) -> flask.Response:
    """POST / with the user's answer (disagreeing with the model), through the load balancer's header."""
    from sentiment_core.evidence import EvidenceSettings

    app = flask.Flask(__name__)
    headers = {"X-Forwarded-For": forwarded_for} | ({"Idempotency-Key": key} if key else {})
    body = {"text": "Good food.", "is_positive_user_answered": False}
    peer = {"REMOTE_ADDR": "10.1.1.1"}
    with app.test_request_context("/", method="POST", json=body, headers=headers, environ_base=peer):
        return service.handle_predict(
            flask.request,
            ConstantModel(0.9),
            lambda: writer,
            SECRET.encode(),
            evidence=EvidenceSettings(max_per_client=cap),
        )


def test_answers_given_with_predictions_count_as_evidence_up_to_the_clients_cap(writer, clean_db) -> None:
    started = datetime.now(UTC)

    answers = [post_answered(writer, f"10.0.0.{i},203.0.113.7,34.120.0.1") for i in range(5)]  # forged prefixes
    answers += [post_answered(writer, "203.0.113.8,34.120.0.1")]  # another client

    records = [r.to_dict() for r in clean_db.collection("predictions").stream()]
    assert [a.status_code for a in answers] == [201] * 6
    assert window_evidence(clean_db, "5", started) == VersionCounts("5", 6, 6, feedback=4, correct=0)
    assert sorted(r["counted_as_evidence"] for r in records) == [False, False, True, True, True, True]
    assert len({r["client_fingerprint"] for r in records}) == 2
    assert all("203.0.113" not in str(r) for r in records)


def test_replay_of_an_answered_request_is_a_replay_and_counts_once(writer, clean_db) -> None:
    started = datetime.now(UTC)

    first = post_answered(writer, "203.0.113.7,34.120.0.1", key="answered-once")
    again = post_answered(writer, "203.0.113.7,34.120.0.1", key="answered-once")

    assert (first.status_code, again.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert window_evidence(clean_db, "5", started).feedback == 1
