"""The staged model: fetched from MODEL_URI, checked against its manifest, served by one onnxruntime session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sentiment_core.contract import INPUT_NAME, MANIFEST_FILENAME, MODEL_FILENAME, OUTPUT_NAME
from sentiment_core.manifest import Manifest, ManifestError, read_staged_folder, sha256_bytes


class ModelError(RuntimeError):
    """The staged model cannot be loaded or does not honour the contract."""


class Model:
    """An onnxruntime session on the text-in graph, plus the manifest that names it."""

    def __init__(self, manifest: Manifest, model_bytes: bytes) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # One Cloud Run CPU per instance: more intra-op threads only add contention on small batches.
        options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc
        inputs = [(i.name, i.type) for i in self._session.get_inputs()]
        outputs = [(o.name, o.type) for o in self._session.get_outputs()]
        if inputs != [(INPUT_NAME, "tensor(string)")] or (OUTPUT_NAME, "tensor(float)") not in outputs:
            raise ModelError(f"the model does not have the contract's signature: {inputs} -> {outputs}")
        self.manifest = manifest

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probabilities, float32 [len(texts)]; texts must be non-empty (StringNormalizer rejects [])."""
        (probabilities,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.array(texts, dtype=object)})
        return probabilities


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
