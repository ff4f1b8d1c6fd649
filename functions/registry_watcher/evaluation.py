"""The watcher's own evaluation: every candidate (and the version serving) scored on a labelled set it owns.

Everything else the deploy gate checks comes from the run that uploaded the model, so a run can make them agree
with any file it likes; the evaluation set (`EVAL_SET_URI`, JSON lines `{"text", "label"}`) is staged where no
training identity can write (docs/promotion.md). What the figures mean for the candidate is
watcher_decisions.judge_evaluation (pure); this module reads and scores.

The set is read lazily, at the first candidate, and read again only when its generation (GCS) or modification
time and size (a local file) changed; scores are kept per (model sha256, set sha256), so the serving version is
scored once per instance, not at every promotion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from watcher_decisions import Evaluation

from sentiment_core.contract import DEFAULT_THRESHOLD, META_THRESHOLD, MODEL_FILENAME
from sentiment_core.deployments import Serving
from sentiment_core.manifest import sha256_bytes
from sentiment_core.onnx_model import ModelContractError, open_session, probabilities

logger = logging.getLogger("sentiment.watcher")

MAX_EVAL_SET_BYTES = 32 * 1024 * 1024  # 2,000 reviews are about 1.5 MB; a bound so a wrong URI cannot exhaust memory
MIN_EVAL_EXAMPLES = 100  # fewer cannot tell 0.85 from 0.95 (a standard error of 0.03 at 100)
BATCH = 256  # texts per onnxruntime call: bounded memory for long reviews
MAX_SCORES = 32  # cached scores (a few bytes each): versions checked by one instance in its lifetime


class EvaluationUnavailable(RuntimeError):
    """The evaluation set (or the serving version's staged file) cannot be read, or the set is not usable: nothing
    can be judged (503, the claim is released and the next tick retries)."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The parsed set and the sha256 of its bytes (what scores are cached by, and what the history names)."""

    uri: str
    sha256: str
    texts: tuple[str, ...]
    labels: np.ndarray  # int8 [n]

    @property
    def n(self) -> int:
        return len(self.texts)


def parse_eval_set(raw: bytes, uri: str) -> EvalSet:
    """Pure: JSON lines `{"text": non-empty str, "label": 0|1}`, blank lines ignored; else EvaluationUnavailable."""
    texts: list[str] = []
    labels: list[int] = []
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise EvaluationUnavailable(f"{uri} is not UTF-8: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise EvaluationUnavailable(f"{uri} line {number} is not JSON: {exc}") from exc
        text, label = (row.get("text"), row.get("label")) if isinstance(row, dict) else (None, None)
        if not isinstance(text, str) or not text.strip() or type(label) is not int or label not in (0, 1):
            raise EvaluationUnavailable(f'{uri} line {number} is not {{"text": non-empty string, "label": 0 or 1}}')
        texts.append(text)
        labels.append(label)
    if len(texts) < MIN_EVAL_EXAMPLES:
        raise EvaluationUnavailable(f"{uri} holds {len(texts)} examples, fewer than {MIN_EVAL_EXAMPLES}")
    if len(set(labels)) < 2:
        raise EvaluationUnavailable(f"{uri} holds examples of one class only")
    return EvalSet(uri, hashlib.sha256(raw).hexdigest(), tuple(texts), np.asarray(labels, dtype=np.int8))


def accuracy(model_bytes: bytes, eval_set: EvalSet) -> float:
    """The model's accuracy on the set at its own decision threshold (metadata `threshold`), as predict answers."""
    try:
        session = open_session(model_bytes)
    except ModelContractError as exc:  # the gate opened it already; a staged file that no longer loads
        raise ValueError(str(exc)) from exc
    raw = session.get_modelmeta().custom_metadata_map.get(META_THRESHOLD)
    threshold = float(raw) if raw is not None else DEFAULT_THRESHOLD
    texts = list(eval_set.texts)
    scores = np.concatenate([probabilities(session, texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)])
    # NaN compares false: a model answering NaN is wrong on every positive example, never accidentally right.
    predicted = (scores >= threshold).astype(np.int8)
    return float(np.mean(predicted == eval_set.labels))


class ObjectReader:
    """Bytes and generation of `gs://bucket/name` (through the Storage client, honouring STORAGE_EMULATOR_HOST),
    `file:///path` or a plain path."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._timeout = timeout_s
        self._client: Any = None

    def generation(self, uri: str) -> str | None:
        """A value that changes when the object does; None when it does not exist."""
        if uri.startswith("gs://"):
            blob = self._blob(uri)
            return None if blob is None else str(blob.generation)
        try:
            stat = _path(uri).stat()
        except FileNotFoundError:
            return None
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def read(self, uri: str, limit: int) -> tuple[bytes, str] | None:
        """The object's bytes (at most `limit`, else EvaluationUnavailable) and generation; None when it is missing."""
        if uri.startswith("gs://"):
            from google.api_core import exceptions as gexc

            blob = self._blob(uri)
            if blob is None:
                return None
            if blob.size is not None and blob.size > limit:
                raise EvaluationUnavailable(f"{uri} is {blob.size} bytes, more than {limit}")
            try:
                # The generation just read: a concurrent overwrite fails rather than mixing two versions.
                raw = blob.download_as_bytes(if_generation_match=blob.generation, timeout=self._timeout)
            except (gexc.NotFound, gexc.PreconditionFailed):
                return None
            return raw, str(blob.generation)
        path = _path(uri)
        try:
            stat = path.stat()
            if stat.st_size > limit:
                raise EvaluationUnavailable(f"{uri} is {stat.st_size} bytes, more than {limit}")
            return path.read_bytes(), f"{stat.st_mtime_ns}:{stat.st_size}"
        except FileNotFoundError:
            return None

    def _blob(self, uri: str) -> Any:
        from google.cloud import storage

        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if self._client is None:
            self._client = storage.Client()
        return self._client.bucket(bucket).get_blob(name, timeout=self._timeout)


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def check_uri(setting: str) -> str:
    """EVAL_SET_URI as `gs://bucket/name`, `file:///path` or an absolute path; ValueError otherwise."""
    if setting.startswith("gs://"):
        bucket, _, name = setting.removeprefix("gs://").partition("/")
        if bucket and name and not name.endswith("/"):
            return setting
    elif _path(setting).is_absolute():
        return setting
    raise ValueError(f"EVAL_SET_URI must be gs://BUCKET/OBJECT, file:///PATH or an absolute path, got {setting!r}")


class Evaluator:
    """Scores models on the evaluation set at `uri`; one per instance (its caches are the point)."""

    def __init__(self, uri: str, reader: ObjectReader | None = None) -> None:
        self.uri = check_uri(uri)
        self._reader = reader or ObjectReader()
        self._lock = threading.Lock()  # a tick and a webhook may judge at once: one read, one cache
        self._set: EvalSet | None = None
        self._generation: str | None = None
        self._scores: dict[tuple[str, str], float] = {}

    def evaluate(self, model_bytes: bytes, serving: Serving | None) -> Evaluation:
        """The candidate's accuracy on the set, and the serving version's (None, with a note, when its staged
        file cannot be read as recorded). EvaluationUnavailable when the set cannot be read."""
        eval_set = self.eval_set()
        candidate_sha = sha256_bytes(model_bytes)
        try:
            candidate = self._score(candidate_sha, eval_set, lambda: model_bytes)
        except ValueError:  # the gate refuses such a model before; a score of 0 refuses it here too
            candidate = 0.0
        figures = Evaluation(eval_set.sha256, eval_set.n, candidate)
        if serving is None:
            return figures
        serving_accuracy, note = self._score_serving(serving, eval_set)
        return dataclasses.replace(
            figures, serving_version=serving.version, serving_accuracy=serving_accuracy, serving_note=note
        )

    def eval_set(self) -> EvalSet:
        """The set, read again only when its generation changed."""
        from google.api_core import exceptions as gexc

        with self._lock:
            try:
                generation = self._reader.generation(self.uri)
                if self._set is not None and generation == self._generation:
                    return self._set
                found = self._reader.read(self.uri, MAX_EVAL_SET_BYTES)
            except (gexc.GoogleAPICallError, OSError) as exc:
                raise EvaluationUnavailable(f"cannot read {self.uri}: {exc}") from exc
            if found is None:
                raise EvaluationUnavailable(f"{self.uri} does not exist: stage it (docs/promotion.md)")
            raw, generation = found
            self._set, self._generation = parse_eval_set(raw, self.uri), generation
            logger.info("evaluation set %s: %d examples, sha256 %s", self.uri, self._set.n, self._set.sha256)
            return self._set

    def _score(self, model_sha256: str, eval_set: EvalSet, model_bytes: Any) -> float:
        key = (model_sha256, eval_set.sha256)
        with self._lock:
            if key in self._scores:
                return self._scores[key]
        score = accuracy(model_bytes(), eval_set)
        with self._lock:
            if len(self._scores) >= MAX_SCORES:
                self._scores.pop(next(iter(self._scores)))  # the oldest
            self._scores[key] = score
        return score

    def _score_serving(self, serving: Serving, eval_set: EvalSet) -> tuple[float | None, str | None]:
        """The serving version's staged file, checked against the sha256 recorded when it was staged: the
        watcher's own copy, never the registry's (which the uploader controls)."""
        from google.api_core import exceptions as gexc

        uri = f"{serving.model_uri.rstrip('/')}/{MODEL_FILENAME}"
        key = (serving.sha256, eval_set.sha256)
        with self._lock:
            if key in self._scores:
                return self._scores[key], None

        def staged() -> bytes:
            try:
                found = self._reader.read(uri, 1 << 31)
            except (gexc.GoogleAPICallError, OSError) as exc:
                raise EvaluationUnavailable(f"cannot read {uri}: {exc}") from exc  # transient: retried next tick
            if found is None:
                raise LookupError(f"{uri} does not exist")
            if sha256_bytes(found[0]) != serving.sha256:
                raise LookupError(f"{uri} is not the sha256 {serving.sha256} recorded when it was staged")
            return found[0]

        try:
            return self._score(serving.sha256, eval_set, staged), None
        except (LookupError, ValueError) as exc:
            logger.warning("version %s serving cannot be scored: %s", serving.version, exc)
            return None, str(exc)
