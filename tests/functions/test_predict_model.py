"""predict's model loading: plain path, file:// and gs:// (GCS emulator), each checked against its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from localdev.services import FUNCTIONS_DIR
from sentiment_core.manifest import write_staged_folder
from tests.functions.conftest import load_function_module, wrong_shape_onnx
from training import export, preprocess
from training.model import FastTextClassifier

predict_model = load_function_module("predict", "predict_model")


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    vocabulary = preprocess.Vocabulary.build(preprocess.tokenize(["good food", "bad food"]), min_count=1, max_size=10)
    torch.manual_seed(0)
    model = FastTextClassifier(len(vocabulary), 4).eval()
    metadata = export.ModelMetadata("run-1", "stars>=3", 0.5, "0" * 64)
    return export.build_onnx(model, vocabulary, metadata).SerializeToString()


def stage(folder: Path, model_bytes: bytes) -> Path:
    write_staged_folder(
        folder, model_bytes, model_name="yelp-sentiment", model_version="7", mlflow_run_id="run-1", threshold=0.5
    )
    return folder


@pytest.mark.parametrize("form", ["path", "file"])
def test_load_local_folder_serves_and_reports_its_manifest(tmp_path: Path, model_bytes: bytes, form: str) -> None:
    folder = stage(tmp_path / "v7", model_bytes)
    uri = str(folder) if form == "path" else f"file://{folder}"

    model = predict_model.load(uri)

    assert model.manifest.model_version == "7"
    probabilities = model.predict(["good food", ""])
    assert probabilities.shape == (2,)
    assert np.all(np.isfinite(probabilities))


def test_load_gcs_prefix_through_the_storage_emulator(gcs_emulator, monkeypatch, tmp_path: Path, model_bytes) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    folder = stage(tmp_path / "v7", model_bytes)
    bucket = storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("staged-models-test")
    for name in ("model.onnx", "manifest.json"):
        bucket.blob(f"yelp-sentiment/7/{name}").upload_from_filename(str(folder / name))

    model = predict_model.load("gs://staged-models-test/yelp-sentiment/7")

    assert model.manifest.model_version == "7"
    bucket.blob("yelp-sentiment/7/model.onnx").upload_from_string(b"tampered")
    with pytest.raises(predict_model.ModelError, match="sha256"):
        predict_model.load("gs://staged-models-test/yelp-sentiment/7/")
    with pytest.raises(predict_model.ModelError, match="cannot read"):
        predict_model.load("gs://staged-models-test/no-such-version")


def test_load_refuses_a_tampered_or_missing_folder(tmp_path: Path, model_bytes: bytes) -> None:
    folder = stage(tmp_path / "v7", model_bytes)
    (folder / "model.onnx").write_bytes(model_bytes + b"\0")

    with pytest.raises(predict_model.ModelError, match="sha256"):
        predict_model.load(str(folder))
    with pytest.raises(predict_model.ModelError, match="does not exist"):
        predict_model.load(str(tmp_path / "missing"))


def test_load_refuses_a_model_without_the_contract_signature(tmp_path: Path) -> None:
    with pytest.raises(predict_model.ModelError, match="signature"):
        predict_model.load(str(stage(tmp_path / "bad", wrong_shape_onnx())))


def test_predict_answers_503_with_retry_after_when_the_model_cannot_be_loaded(monkeypatch, tmp_path: Path) -> None:
    import functions_framework

    monkeypatch.setenv("MODEL_URI", str(tmp_path / "not-staged"))
    monkeypatch.setenv("FEEDBACK_TOKEN_SECRET", "test-secret-0123456789abcdef")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-no-model")
    client = functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py")).test_client()

    for response in (client.post("/", json={"text": "great food"}), client.get("/healthz")):
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "model_unavailable"
        assert response.headers["Retry-After"] == "30"


def test_predict_refuses_to_start_without_its_settings(monkeypatch) -> None:
    import functions_framework

    from sentiment_core.config import ConfigError

    monkeypatch.delenv("MODEL_URI", raising=False)
    monkeypatch.setenv("FEEDBACK_TOKEN_SECRET", "test-secret-0123456789abcdef")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-no-model")

    with pytest.raises(ConfigError, match="MODEL_URI must be set"):
        functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py"))


def test_a_model_without_known_fraction_still_serves_and_reports_none(tmp_path: Path, model_bytes: bytes) -> None:
    import onnx

    older = onnx.load_from_string(model_bytes)
    del older.graph.output[1]  # as exported before monitoring existed: `probability` only
    served = predict_model.load(str(stage(tmp_path, older.SerializeToString())))

    probabilities, known = served.infer(["good food", "bad food"])

    assert served.reports_known_fraction is False
    assert known is None
    np.testing.assert_allclose(probabilities, served.predict(["good food", "bad food"]))


def test_a_model_with_known_fraction_reports_it_per_text(tmp_path: Path, model_bytes: bytes) -> None:
    served = predict_model.load(str(stage(tmp_path, model_bytes)))

    _, known = served.infer(["good food", "good zzz", "!!!"])

    np.testing.assert_allclose(known, [1.0, 0.5, 0.0])


@pytest.mark.parametrize(
    ("expected", "serves"),
    [(None, True), ("matching", True), ("f" * 64, False), ("0" * 64, False)],
    ids=["unset-serves", "matching-serves", "other-sha256-refused", "zero-sha256-refused"],
)
def test_load_with_an_expected_sha256_serves_only_that_model(tmp_path: Path, model_bytes: bytes, expected, serves):
    from sentiment_core.manifest import sha256_bytes

    folder = stage(tmp_path / "v7", model_bytes)  # consistent with its own manifest either way
    expected = sha256_bytes(model_bytes) if expected == "matching" else expected

    if serves:
        assert predict_model.load(str(folder), expected).manifest.model_version == "7"
    else:
        with pytest.raises(predict_model.ModelError, match="MODEL_SHA256"):
            predict_model.load(str(folder), expected)


def predict_client(monkeypatch, folder: Path, sha256: str):
    import functions_framework

    monkeypatch.setenv("MODEL_URI", str(folder))
    monkeypatch.setenv("MODEL_SHA256", sha256)
    monkeypatch.setenv("FEEDBACK_TOKEN_SECRET", "test-secret-0123456789abcdef")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-sha256")
    return functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py")).test_client()


def test_predict_whose_model_differs_from_model_sha256_is_unavailable_and_not_healthy(
    monkeypatch, tmp_path: Path, model_bytes: bytes, caplog
) -> None:
    """A swapped staged folder (consistent with its own manifest) never serves: /healthz is not ok, so neither the
    local router nor Cloud Run's startup probe gives the revision traffic."""
    client = predict_client(monkeypatch, stage(tmp_path / "v7", model_bytes), "f" * 64)

    with caplog.at_level("ERROR", logger="sentiment"):
        answers = [client.get("/healthz"), client.post("/", json={"text": "great food"})]

    for response in answers:
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "model_unavailable"
    assert any("MODEL_SHA256" in record.getMessage() for record in caplog.records)


def test_predict_whose_model_matches_model_sha256_is_healthy(monkeypatch, tmp_path: Path, model_bytes: bytes) -> None:
    from sentiment_core.manifest import sha256_bytes

    client = predict_client(monkeypatch, stage(tmp_path / "v7", model_bytes), sha256_bytes(model_bytes))

    response = client.get("/healthz")

    assert (response.status_code, response.get_json()["model_version"]) == (200, "7")


def test_predict_refuses_to_start_with_a_malformed_model_sha256(monkeypatch, tmp_path: Path) -> None:
    from sentiment_core.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL_SHA256 must be 64 lowercase hex"):
        predict_client(monkeypatch, tmp_path, "F" * 64)
