"""The staged model: fetched from MODEL_URI, checked against its manifest, served by one onnxruntime session."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sentiment_core.contract import (
    EXPLANATION_OUTPUTS,
    KNOWN_FRACTION_OUTPUT,
    MANIFEST_FILENAME,
    MODEL_FILENAME,
    OUTPUT_NAME,
)
from sentiment_core.manifest import Manifest, ManifestError, read_staged_folder, sha256_bytes
from sentiment_core.onnx_model import (
    ModelContractError,
    has_explanation,
    has_known_fraction,
    open_session,
    probabilities,
    probabilities_and_known,
    run_outputs,
)

TOP_TERMS = 10
BIGRAM_JOINER = " "  # training.preprocess.BIGRAM_JOINER: how the vocabulary spells a bigram


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
        self.explains = has_explanation(self._session)
        self._explain_outputs = [
            OUTPUT_NAME,
            *([KNOWN_FRACTION_OUTPUT] if self.reports_known_fraction else []),
            *EXPLANATION_OUTPUTS,
        ]

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probabilities, float32 [len(texts)]; texts must be non-empty (StringNormalizer rejects [])."""
        return probabilities(self._session, texts)

    def infer(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, from a model that reports it, the share of each text's tokens it knows."""
        if self.reports_known_fraction:
            return probabilities_and_known(self._session, texts)
        return probabilities(self._session, texts), None

    def explain(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None, list[Explanation]]:
        """infer() plus each text's explanation, in one run; the model must explain (`explains`)."""
        outputs = run_outputs(self._session, self._explain_outputs, texts)
        probability, known = outputs[0], (outputs[1] if self.reports_known_fraction else None)
        return probability, known, explanations(*outputs[-len(EXPLANATION_OUTPUTS) :])


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why the model answered: logit = bias + the sum of every known term's weight; `terms` are the largest."""

    bias: float
    terms: tuple[tuple[str, float], ...]  # (term, weight), largest |weight| first

    def to_api(self) -> dict[str, Any]:
        return {"bias": self.bias, "terms": [{"term": term, "weight": weight} for term, weight in self.terms]}


def contributions(tokens: Sequence[str], scores: Sequence[float], known: Sequence[float]) -> dict[str, float]:
    """Every known feature's exact share of one text's logit, score / max(sum of known, 1), summed per term (a term
    seen twice counts twice): with the bias, all of them add up to the logit. `known` is 1 per feature of the
    vocabulary, or its weight in the mean for a model trained with idf weights (whose scores are weighted too).

    Feature j < T is the unigram tokens[j]; feature T + j the bigram tokens[j] tokens[j + 1] (the graph's
    order, training.export.build_onnx). Unknown features add nothing to the logit and are left out.
    """
    width = len(tokens)
    weights = np.asarray(known, dtype=np.float64)
    known_at = np.flatnonzero(weights).tolist()
    divisor = max(float(weights.sum()), 1.0)  # the graph's max(sum of feature_known, 1)
    totals: dict[str, float] = {}
    for j in known_at:
        term = tokens[j] if j < width else f"{tokens[j - width]}{BIGRAM_JOINER}{tokens[j - width + 1]}"
        totals[term] = totals.get(term, 0.0) + float(scores[j]) / divisor
    return totals


def top_terms(totals: dict[str, float], limit: int = TOP_TERMS) -> tuple[tuple[str, float], ...]:
    """The `limit` terms of largest |weight|, largest first (ties by term, so answers are stable)."""
    return tuple(sorted(totals.items(), key=lambda item: (-abs(item[1]), item[0]))[:limit])


def explanations(tokens: np.ndarray, scores: np.ndarray, known: np.ndarray, bias: np.ndarray) -> list[Explanation]:
    """One Explanation per text from the graph's explanation outputs (contract.EXPLANATION_OUTPUTS)."""
    shared_bias = float(bias.reshape(-1)[0])
    rows = tokens.tolist()
    return [Explanation(shared_bias, top_terms(contributions(rows[i], scores[i], known[i]))) for i in range(len(rows))]


def load(model_uri: str, expected_sha256: str | None = None) -> Model:
    """MODEL_URI is a staged folder: a plain path, file://path or gs://bucket/prefix.

    With `expected_sha256` (MODEL_SHA256, which the redeploy sets on every revision it makes) the model file must
    have exactly that sha256: the folder's own manifest only proves the folder is consistent, not that it holds
    the version the watcher checked, so a folder rewritten or swapped after the check is refused, never served.
    """
    if model_uri.startswith("gs://"):
        manifest, model_bytes = _read_gcs(model_uri)
    else:
        folder = Path(model_uri.removeprefix("file://"))
        try:
            manifest, model_bytes = read_staged_folder(folder)
        except ManifestError as exc:
            raise ModelError(str(exc)) from exc
    if expected_sha256 is not None:
        actual = sha256_bytes(model_bytes)
        if actual != expected_sha256:
            raise ModelError(
                f"{model_uri}/{MODEL_FILENAME} has sha256 {actual}, not the {expected_sha256} this revision was "
                "deployed with (MODEL_SHA256): refusing to serve it"
            )
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
