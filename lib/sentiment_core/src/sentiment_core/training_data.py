"""The training data in its bucket, as the retrain check and the training job both see it (docs/retraining.md).

A data bucket prefix `gs://<bucket>/<prefix>/` holds the training data at any depth: Yelp review JSON lines and
Yelp Polarity CSV (optionally gzipped), and the exported user feedback under `<prefix>/feedback/`. Beside them,
files training reads but never trains on: out-of-domain development sets under `<prefix>/ood/` (`.tsv`) and the
hashes of the deploy gate's evaluation texts under `<prefix>/holdout/` (`.sha256`), which training drops.

The fingerprint says what a training run would learn from: every data object's name, generation and MD5, and
the settings of the run (its extra arguments, its image). The check starts a run when the fingerprint differs
from that of the last finished run; the job tags its run with the fingerprint of what it read. Both call
`fingerprint` here, so the same data and settings always give the same value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from sentiment_core import config

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")
FEEDBACK_FOLDER = "feedback/"  # exported answers, JSON lines {"text", "label", "source": "feedback", ...}
OOD_FOLDER = "ood/"  # out-of-domain development sets (label<TAB>text .tsv): scored, never trained on
HOLDOUT_FOLDER = "holdout/"  # sha256 of texts training must never see (the deploy gate's evaluation set)
FINGERPRINT_TAG = "training_fingerprint"  # MLflow run tag: the fingerprint of the data and settings it used


class DataLocationError(ValueError):
    """A data URI that is not `gs://<bucket>/<prefix>/`."""


@dataclasses.dataclass(frozen=True)
class DataObject:
    """One object of the data bucket, as its listing describes it."""

    name: str  # the object's name within the bucket
    generation: str  # GCS's version of the object: a new upload of the same name has a new one
    md5: str  # base64 MD5 of its bytes, as GCS reports it ("" where the store keeps none)

    def pinned_uri(self, bucket: str) -> str:
        """`gs://bucket/name#generation`: this version of the object, even after the name is written again."""
        return f"gs://{bucket}/{self.name}#{self.generation}"


@dataclasses.dataclass(frozen=True)
class DataLocation:
    """`gs://<bucket>/<prefix>/`: where the training data lives."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, uri: str) -> DataLocation:
        if not uri.startswith("gs://"):
            raise DataLocationError(f"the data location must be gs://<bucket>/<prefix>/, got {uri!r}")
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        if not bucket or (prefix and not prefix.endswith("/")):
            raise DataLocationError(f"the data location must be gs://<bucket>/ or gs://<bucket>/<prefix>/, got {uri!r}")
        return cls(bucket, prefix)

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"

    def folder(self, name: str) -> str:
        """The prefix of one of the data's folders (FEEDBACK_FOLDER, OOD_FOLDER, HOLDOUT_FOLDER)."""
        return self.prefix + name

    def is_training_data(self, name: str) -> bool:
        """Trained on: a data file under the prefix (feedback included), not in the ood or holdout folders."""
        if not name.startswith(self.prefix) or not name.endswith(DATA_SUFFIXES):
            return False
        return not name.startswith((self.folder(OOD_FOLDER), self.folder(HOLDOUT_FOLDER)))


def list_training_data(client: Any, location: DataLocation) -> list[DataObject]:
    """The training data objects under the location, by name (a google.cloud.storage client's listing)."""
    blobs = client.list_blobs(location.bucket, prefix=location.prefix or None)
    found = [
        DataObject(blob.name, str(blob.generation or ""), blob.md5_hash or "")
        for blob in blobs
        if location.is_training_data(blob.name)
    ]
    return sorted(found, key=lambda o: o.name)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """What, besides the data, decides what a run learns: training's extra arguments and the image that runs it.

    The check and the job read the same variables (Terraform and the local stack set both from one value):
    RETRAIN_ARGS, extra arguments of `python -m training.train` (shell words, e.g. `--epochs 4`); TRAINING_IMAGE,
    the training image by digest ("" locally, where the work tree is the code).
    """

    args: tuple[str, ...] = ()
    image: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainingSettings:
        raw = config.optional("RETRAIN_ARGS", "", env)
        try:
            args = tuple(shlex.split(raw))
        except ValueError as exc:
            raise config.ConfigError(f"RETRAIN_ARGS must be shell words, got {raw!r}: {exc}") from exc
        return cls(args=args, image=config.optional("TRAINING_IMAGE", "", env))

    def to_dict(self) -> dict[str, Any]:
        return {"args": list(self.args), "image": self.image}


def fingerprint(objects: Iterable[DataObject], settings: TrainingSettings) -> str:
    """sha256 of the data objects (name, generation, MD5; order does not matter) and the settings."""
    canonical = {
        "data": sorted([o.name, o.generation, o.md5] for o in objects),
        "settings": settings.to_dict(),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
