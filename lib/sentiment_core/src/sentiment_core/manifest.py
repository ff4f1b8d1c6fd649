"""The staged model folder: `model.onnx` beside `manifest.json` (docs/architecture.md, model artifact)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiment_core.contract import MANIFEST_FILENAME, MODEL_FILENAME, REFERENCE_FILENAME

_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest is missing, malformed or does not match its model file."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not double memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Identity of a staged model version."""

    model_name: str
    model_version: str | None
    mlflow_run_id: str
    sha256: str
    threshold: float
    staged_at: str
    # sha256 of reference.json beside the model (monitoring's reference); None for folders staged before it.
    reference_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and type-check a decoded manifest.json."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - data.keys() - {"reference_sha256"})
        if missing:
            raise ManifestError(f"manifest lacks {', '.join(missing)}")
        version = data["model_version"]
        if version is not None and not isinstance(version, str):
            raise ManifestError("model_version must be a string or null")
        for name in ("model_name", "mlflow_run_id", "sha256", "staged_at"):
            if not isinstance(data[name], str) or not data[name]:
                raise ManifestError(f"{name} must be a non-empty string")
        threshold = data["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ManifestError("threshold must be a number")
        if not 0.0 < float(threshold) < 1.0:
            raise ManifestError("threshold must be between 0 and 1")
        reference_sha256 = data.get("reference_sha256")
        if reference_sha256 is not None and (not isinstance(reference_sha256, str) or not reference_sha256):
            raise ManifestError("reference_sha256 must be a non-empty string or null")
        return cls(
            **{name: data[name] for name in fields - {"reference_sha256", "threshold"}},
            threshold=float(threshold),
            reference_sha256=reference_sha256,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse manifest.json text."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc

    def to_json(self) -> str:
        """Serialise with stable key order."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def now_iso() -> str:
    """UTC timestamp in RFC 3339 with a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_staged_folder(
    folder: Path,
    model_bytes: bytes,
    *,
    model_name: str,
    model_version: str | None,
    mlflow_run_id: str,
    threshold: float,
    reference: dict[str, Any] | None = None,
) -> Manifest:
    """Write model.onnx (and reference.json) then manifest.json, each atomically, so a reader never sees half a
    folder: a folder with a manifest is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    reference_bytes = reference_json(reference) if reference is not None else None
    manifest = Manifest(
        model_name=model_name,
        model_version=model_version,
        mlflow_run_id=mlflow_run_id,
        sha256=sha256_bytes(model_bytes),
        threshold=threshold,
        staged_at=now_iso(),
        reference_sha256=sha256_bytes(reference_bytes) if reference_bytes is not None else None,
    )
    _atomic_write(folder / MODEL_FILENAME, model_bytes)
    if reference_bytes is not None:
        _atomic_write(folder / REFERENCE_FILENAME, reference_bytes)
    _atomic_write(folder / MANIFEST_FILENAME, manifest.to_json().encode())
    return manifest


def reference_json(reference: dict[str, Any]) -> bytes:
    """reference.json's bytes: stable key order, so the same reference always has the same sha256."""
    return (json.dumps(reference, indent=2, sort_keys=True) + "\n").encode()


def read_staged_folder(folder: Path) -> tuple[Manifest, bytes]:
    """Read a local staged folder and check the model's sha256 against its manifest."""
    manifest_path = folder / MANIFEST_FILENAME
    model_path = folder / MODEL_FILENAME
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path} does not exist")
    if not model_path.is_file():
        raise ManifestError(f"{model_path} does not exist")
    manifest = Manifest.from_json(manifest_path.read_bytes())
    model_bytes = model_path.read_bytes()
    actual = sha256_bytes(model_bytes)
    if actual != manifest.sha256:
        raise ManifestError(f"{model_path} has sha256 {actual}, manifest says {manifest.sha256}")
    if manifest.reference_sha256 is not None:
        reference_path = folder / REFERENCE_FILENAME
        found = sha256_file(reference_path) if reference_path.is_file() else "no file"
        if found != manifest.reference_sha256:
            raise ManifestError(f"{reference_path} has sha256 {found}, manifest says {manifest.reference_sha256}")
    return manifest, model_bytes


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
