"""The staged model: fetched from MODEL_URI, checked against its manifest, served by one onnxruntime session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sentiment_core.contract import MANIFEST_FILENAME, MODEL_FILENAME
from sentiment_core.manifest import Manifest, ManifestError, read_staged_folder, sha256_bytes
from sentiment_core.onnx_model import (
    ModelContractError,
    has_known_fraction,
    open_session,
    probabilities,
    probabilities_and_known,
)


class ModelError(RuntimeError):
    """The staged model cannot be loaded or does not honour the contract."""


class Model:
    """An onnxruntime session on the text-in graph, plus the manifest that names it."""

    def __init__(self, manifest: Manifest, model_bytes: bytes) -> None:
        # One Cloud Run CPU per instance: more intra-op threads only add contention on small batches.
        try:
            self._session = open_session(model_bytes, threads=int(os.environ.get("ORT_THREADS", "1")))
        except ModelContractError as exc:
            raise ModelError(str(exc)) from exc
        self.manifest = manifest
        self.reports_known_fraction = has_known_fraction(self._session)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probabilities, float32 [len(texts)]; texts must be non-empty (StringNormalizer rejects [])."""
        return probabilities(self._session, texts)

    def infer(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, from a model that reports it, the share of each text's tokens it knows."""
        if self.reports_known_fraction:
            return probabilities_and_known(self._session, texts)
        return probabilities(self._session, texts), None


def load(model_uri: str) -> Model:
    """MODEL_URI is a staged folder: a plain path, file://path or gs://bucket/prefix."""
    if model_uri.startswith("gs://"):
        manifest, model_bytes = _read_gcs(model_uri)
    else:
        folder = Path(model_uri.removeprefix("file://"))
        try:
            manifest, model_bytes = read_staged_folder(folder)
        except ManifestError as exc:
            raise ModelError(str(exc)) from exc
    return Model(manifest, model_bytes)


def _read_gcs(model_uri: str) -> tuple[Manifest, bytes]:
    from google.cloud import storage  # only instances serving from a bucket pay for this import

    bucket_name, _, prefix = model_uri.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/")
    bucket = storage.Client().bucket(bucket_name)

    def blob(name: str) -> bytes:
        path = f"{prefix}/{name}" if prefix else name
        try:
            return bucket.blob(path).download_as_bytes()
        except Exception as exc:  # NotFound, Forbidden, transport errors: all mean "cannot serve"
            raise ModelError(f"cannot read gs://{bucket_name}/{path}: {exc}") from exc

    try:
        manifest = Manifest.from_json(blob(MANIFEST_FILENAME))
    except ManifestError as exc:
        raise ModelError(str(exc)) from exc
    model_bytes = blob(MODEL_FILENAME)
    if sha256_bytes(model_bytes) != manifest.sha256:
        raise ModelError(f"{model_uri}/{MODEL_FILENAME} does not match the sha256 in its manifest")
    return manifest, model_bytes
