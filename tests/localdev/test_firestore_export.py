"""The local stack's persistence: the Firestore emulator's export and import (what `make down`/`make up` use)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from localdev import services

pytestmark = pytest.mark.system  # one emulator, not the whole stack

PROJECT = "demo-export-test"


def document_url(host: str, name: str) -> str:
    return f"http://{host}/v1/projects/{PROJECT}/databases/(default)/documents/things/{name}"


def write(host: str, name: str, value: int) -> None:
    body = json.dumps({"fields": {"value": {"integerValue": str(value)}}}).encode()
    request = urllib.request.Request(
        document_url(host, name), data=body, method="PATCH", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).close()


def read(host: str, name: str) -> int | None:
    try:
        with urllib.request.urlopen(document_url(host, name), timeout=10) as response:
            return int(json.loads(response.read())["fields"]["value"]["integerValue"])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_export_then_a_new_emulator_importing_it_has_every_document(tmp_path: Path) -> None:
    destination = tmp_path / "firestore"
    with services.start_firestore_emulator(tmp_path / "first") as first:
        write(first.url, "a", 1)
        write(first.url, "b", 2)
        services.export_firestore(first.url, PROJECT, destination)
    with services.start_firestore_emulator(tmp_path / "second", import_from=destination) as second:
        assert (read(second.url, "a"), read(second.url, "b")) == (1, 2)


def test_a_failed_export_keeps_the_previous_one(tmp_path: Path) -> None:
    destination = tmp_path / "firestore"
    with services.start_firestore_emulator(tmp_path / "first") as emulator:
        write(emulator.url, "a", 1)
        services.export_firestore(emulator.url, PROJECT, destination)
    before = sorted(p.relative_to(destination) for p in destination.rglob("*"))

    with pytest.raises(services.ServiceError, match="did not export"):
        services.export_firestore(f"127.0.0.1:{services.free_port()}", PROJECT, destination, timeout_s=2)

    assert sorted(p.relative_to(destination) for p in destination.rglob("*")) == before
    assert services.firestore_export_metadata(destination) is not None


def test_start_without_an_export_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with services.start_firestore_emulator(tmp_path / "run", import_from=tmp_path / "empty") as emulator:
        assert read(emulator.url, "a") is None
