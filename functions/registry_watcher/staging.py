"""Staging an accepted version in the serving bucket:
`gs://BUCKET/<model>/v<version>/{model.onnx,reference.json,manifest.json}`.

A prefix, once written, is never overwritten: staging again after a crash reuses what is there when it is the
same model, and refuses when it is not (the registry was reset, say), so a serving revision's files never change.
"""

from __future__ import annotations

from sentiment_core.contract import MANIFEST_FILENAME, MODEL_FILENAME, REFERENCE_FILENAME
from sentiment_core.manifest import Manifest, ManifestError, now_iso, reference_json, sha256_bytes
from sentiment_core.monitoring import Reference


class StagingError(RuntimeError):
    """The bucket could not be written or read."""


class StagingConflict(StagingError):
    """The version's prefix already holds a different model."""


def bucket_name(setting: str) -> str:
    """SERVING_BUCKET as `name` or `gs://name`."""
    name = setting.removeprefix("gs://").strip("/")
    if not name or "/" in name:
        raise ValueError(f"SERVING_BUCKET must be a bucket name, got {setting!r}")
    return name


class GcsStager:
    def __init__(self, bucket: str, timeout_s: float = 30.0) -> None:
        from google.cloud import storage  # honours STORAGE_EMULATOR_HOST

        self._bucket_name = bucket_name(bucket)
        self._bucket = storage.Client().bucket(self._bucket_name)
        self._timeout = timeout_s

    def uri(self, model_name: str, version: str) -> str:
        return f"gs://{self._bucket_name}/{model_name}/v{version}"

    def stage(
        self,
        model_bytes: bytes,
        *,
        model_name: str,
        version: str,
        run_id: str,
        threshold: float,
        reference: Reference | None = None,
    ) -> str:
        """The staged folder's gs:// URI; idempotent for the same model bytes. With `reference` (monitoring's),
        reference.json is written beside the model and its sha256 listed in the manifest."""
        from google.api_core import exceptions as gexc

        prefix = f"{model_name}/v{version}"
        sha256 = sha256_bytes(model_bytes)
        try:
            existing = self._existing_manifest(prefix)
            if existing is not None:
                if existing.sha256 != sha256:
                    raise StagingConflict(f"{self.uri(model_name, version)} already holds sha256 {existing.sha256}")
                return self.uri(model_name, version)
            model_blob = self._bucket.blob(f"{prefix}/{MODEL_FILENAME}")
            try:
                model_blob.upload_from_string(
                    model_bytes, content_type="application/octet-stream", if_generation_match=0, timeout=self._timeout
                )
            except gexc.PreconditionFailed as exc:  # a crashed earlier run wrote the model but not its manifest
                if sha256_bytes(model_blob.download_as_bytes(timeout=self._timeout)) != sha256:
                    raise StagingConflict(f"{self.uri(model_name, version)} holds another {MODEL_FILENAME}") from exc
            reference_bytes = reference_json(reference.to_dict()) if reference is not None else None
            if reference_bytes is not None:
                # Overwritten freely: until the manifest exists nothing reads it, and the same reference always
                # has the same bytes (reference_json's stable order), so a retry writes what a crash left.
                self._bucket.blob(f"{prefix}/{REFERENCE_FILENAME}").upload_from_string(
                    reference_bytes, content_type="application/json", timeout=self._timeout
                )
            manifest = Manifest(
                model_name=model_name,
                model_version=version,
                mlflow_run_id=run_id,
                sha256=sha256,
                threshold=threshold,
                staged_at=now_iso(),
                reference_sha256=sha256_bytes(reference_bytes) if reference_bytes is not None else None,
            )
            # The manifest goes last: a folder with a manifest is complete.
            self._bucket.blob(f"{prefix}/{MANIFEST_FILENAME}").upload_from_string(
                manifest.to_json(), content_type="application/json", if_generation_match=0, timeout=self._timeout
            )
        except StagingError:
            raise
        except gexc.PreconditionFailed as exc:  # a concurrent stager won the race: check what it wrote
            existing = self._existing_manifest(prefix)
            if existing is None or existing.sha256 != sha256:
                raise StagingConflict(f"{self.uri(model_name, version)} was written concurrently") from exc
        except (gexc.GoogleAPICallError, OSError) as exc:
            raise StagingError(f"cannot write {self.uri(model_name, version)}: {exc}") from exc
        return self.uri(model_name, version)

    def _existing_manifest(self, prefix: str) -> Manifest | None:
        from google.api_core import exceptions as gexc

        try:
            raw = self._bucket.blob(f"{prefix}/{MANIFEST_FILENAME}").download_as_bytes(timeout=self._timeout)
        except gexc.NotFound:
            return None
        try:
            return Manifest.from_json(raw)
        except ManifestError as exc:
            raise StagingConflict(f"gs://{self._bucket_name}/{prefix} has an unreadable manifest: {exc}") from exc
