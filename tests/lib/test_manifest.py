import json
from pathlib import Path

import pytest

from sentiment_core.manifest import Manifest, ManifestError, read_staged_folder, sha256_bytes, write_staged_folder


def test_write_then_read_staged_folder_round_trips(tmp_path: Path) -> None:
    written = write_staged_folder(
        tmp_path / "v3",
        b"onnx-bytes",
        model_name="yelp-sentiment",
        model_version="3",
        mlflow_run_id="r1",
        threshold=0.5,
    )

    manifest, model_bytes = read_staged_folder(tmp_path / "v3")

    assert manifest == written
    assert model_bytes == b"onnx-bytes"
    assert manifest.sha256 == sha256_bytes(b"onnx-bytes")
    assert manifest.staged_at.endswith("Z")
    assert sorted(p.name for p in (tmp_path / "v3").iterdir()) == ["manifest.json", "model.onnx"]


def test_read_staged_folder_rejects_a_model_that_does_not_match_its_sha256(tmp_path: Path) -> None:
    write_staged_folder(tmp_path, b"original", model_name="m", model_version=None, mlflow_run_id="r", threshold=0.5)
    (tmp_path / "model.onnx").write_bytes(b"tampered")

    with pytest.raises(ManifestError, match="sha256"):
        read_staged_folder(tmp_path)


def test_read_staged_folder_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_staged_folder(tmp_path)


VALID = {
    "model_name": "yelp-sentiment",
    "model_version": "2",
    "mlflow_run_id": "abc",
    "sha256": "00" * 32,
    "threshold": 0.5,
    "staged_at": "2026-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": True}, "threshold must be a number"),
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"model_version": 2}, "model_version"),
        ({"sha256": ""}, "sha256"),
        ({"model_name": None}, "model_name"),
    ],
)
def test_manifest_from_dict_rejects_bad_fields(change: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(VALID | change)


def test_manifest_from_json_rejects_missing_fields_and_bad_json() -> None:
    with pytest.raises(ManifestError, match="lacks sha256"):
        Manifest.from_json(json.dumps({k: v for k, v in VALID.items() if k != "sha256"}))
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json("{")
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.from_json("[]")


def test_manifest_to_json_round_trips() -> None:
    manifest = Manifest.from_dict(VALID)

    assert Manifest.from_json(manifest.to_json()) == manifest


def test_staged_folder_with_a_reference_lists_its_sha256_and_refuses_it_changed(tmp_path: Path) -> None:
    reference = {"schema": 1, "predictions": 2, "b": [1, 2]}

    manifest = write_staged_folder(
        tmp_path, b"model", model_name="m", model_version="1", mlflow_run_id="r", threshold=0.5, reference=reference
    )

    assert manifest.reference_sha256 == sha256_bytes((tmp_path / "reference.json").read_bytes())
    assert json.loads((tmp_path / "reference.json").read_text()) == reference
    assert read_staged_folder(tmp_path)[0] == manifest
    (tmp_path / "reference.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"reference\.json has sha256"):
        read_staged_folder(tmp_path)
    (tmp_path / "reference.json").unlink()
    with pytest.raises(ManifestError, match="no file"):
        read_staged_folder(tmp_path)


def test_manifest_without_reference_sha256_reads_as_staged_before_monitoring() -> None:
    manifest = Manifest.from_dict({**VALID, "reference_sha256": None})

    assert manifest.reference_sha256 is None
    assert Manifest.from_dict({k: v for k, v in VALID.items() if k != "reference_sha256"}) == manifest
