"""predict's handler when the model fails on a valid request: a 5xx, nothing stored, a server error counted
in the version's window (the real REST writer on the emulator; the failing model is a stand-in)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

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
    """A loaded model whose inference goes wrong: it raises, or answers NaN."""

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
