"""Both public functions under functions-framework (gunicorn), against the real Firestore emulator."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore

from localdev import services
from sentiment_core import events
from sentiment_core.monitoring import MonitorCounts
from sentiment_core.records import window_hour
from tests.support import ORIGIN, PROJECT, SECRET, STORE_TIMEOUT_S  # noqa: F401 (re-exported to tests)


@pytest.fixture(scope="session")
def predict_url(function_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with services.start_function("predict", tmp_path_factory.mktemp("predict"), function_env) as service:
        yield service.url


@pytest.fixture(scope="session")
def feedback_url(function_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """feedback with GET /predictions turned on, as the operators' deployment and the local demo run it."""
    env = function_env | {"PREDICTIONS_LISTING": "on"}
    with services.start_function(
        "feedback", tmp_path_factory.mktemp("feedback"), env, ready_path="/statistics"
    ) as service:
        yield service.url


@pytest.fixture(scope="session")
def public_feedback_url(function_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """feedback as the public deployment runs it: PREDICTIONS_LISTING left at its default (off)."""
    with services.start_function(
        "feedback", tmp_path_factory.mktemp("public-feedback"), function_env, ready_path="/statistics"
    ) as service:
        yield service.url


class Answer:
    """A response, decoded."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:  # not every server answers JSON (MLflow's /health says OK)
            self.json = None

    @property
    def error_code(self) -> str | None:
        return (self.json or {}).get("error", {}).get("code") if isinstance(self.json, dict) else None


def call(
    url: str,
    body: Any = None,
    *,
    method: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    source: str | None = None,
) -> Answer:
    """One HTTP request with http.client, which adds no header of its own but Host and Content-Length.

    source: the local address to connect from (a loopback address such as 127.0.0.2 acts as another client).
    """
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    all_headers.update(headers or {})
    parsed = urllib.parse.urlsplit(url)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    source_address = (source, 0) if source is not None else None
    connection = http.client.HTTPConnection(
        parsed.hostname, parsed.port, timeout=timeout, source_address=source_address
    )
    try:
        connection.request(method or ("POST" if data is not None else "GET"), target, body=data, headers=all_headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


def counters(db: firestore.Client) -> dict[str, dict[str, int]]:
    """Counter shards summed per model version."""
    totals: dict[str, dict[str, int]] = {}
    for shard in db.collection("counter_shards").stream():
        data = shard.to_dict()
        version = totals.setdefault(data["model_version"], {"predictions": 0, "feedback": 0, "correct": 0})
        for field in version:
            version[field] += int(data.get(field, 0))
    return totals


def count(query) -> int:
    """An aggregation query's count."""
    return int(query.count().get()[0][0].value)


def counted_from_records(db: firestore.Client, version: str, since: datetime | None = None) -> dict[str, int]:
    """The same numbers, recomputed from the records with aggregation queries; with `since`, of the records made
    from then on only (the retained window, compared with the window counters: docs/architecture.md)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    records = db.collection("predictions").where(filter=FieldFilter("model_version", "==", version))
    if since is not None:
        records = records.where(filter=FieldFilter("created_at", ">=", since))

    return {
        "predictions": count(records),
        "feedback": count(records.where(filter=FieldFilter("has_feedback", "==", True))),
        "correct": count(records.where(filter=FieldFilter("correct", "==", True))),
    }


WINDOW_FIELDS = ("predictions", "positive", "feedback", "correct", "server_errors")


def window_counters(db: firestore.Client) -> dict[tuple[str, datetime], dict[str, int]]:
    """Window counter shards summed per model version and hour."""
    totals: dict[tuple[str, datetime], dict[str, int]] = {}
    for shard in db.collection("counter_windows").stream():
        data = shard.to_dict()
        window = totals.setdefault((data["model_version"], data["hour"]), dict.fromkeys(WINDOW_FIELDS, 0))
        for field in WINDOW_FIELDS:
            window[field] += int(data.get(field, 0))
    return totals


def window_monitoring(db: firestore.Client) -> dict[tuple[str, datetime], MonitorCounts]:
    """Monitoring's histograms and confidence sums in the window counters, summed per model version and hour."""
    totals: dict[tuple[str, datetime], MonitorCounts] = {}
    for shard in db.collection("counter_windows").stream():
        data = shard.to_dict()
        window = (data["model_version"], data["hour"])
        totals[window] = totals.get(window, MonitorCounts()) + MonitorCounts.from_document(data)
    return totals


def monitoring_from_records(db: firestore.Client) -> dict[tuple[str, datetime], MonitorCounts]:
    """The same, recomputed from every stored prediction's probability, text and known fraction."""
    totals: dict[tuple[str, datetime], MonitorCounts] = {}
    for record in db.collection("predictions").stream():
        data = record.to_dict()
        window = (data["model_version"], window_hour(data["created_at"]))
        totals[window] = totals.get(window, MonitorCounts()) + MonitorCounts.of(
            data["probability"], data["text"], data.get("known_fraction"), positive=data["model_answer"]
        )
    return totals


def window_counted_from_records(db: firestore.Client, version: str, hour: datetime) -> dict[str, int]:
    """The same numbers for one version and hour, from the records with aggregation queries (no server errors:
    a failed request stores no record)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    records = (
        db.collection("predictions")
        .where(filter=FieldFilter("model_version", "==", version))
        .where(filter=FieldFilter("created_at", ">=", hour))
        .where(filter=FieldFilter("created_at", "<", hour + timedelta(hours=1)))
    )

    return {
        "predictions": count(records),
        "positive": count(records.where(filter=FieldFilter("model_answer", "==", True))),
        "feedback": count(records.where(filter=FieldFilter("has_feedback", "==", True))),
        "correct": count(records.where(filter=FieldFilter("correct", "==", True))),
        "server_errors": 0,
    }


def staged_dir(trained: dict) -> Path:
    return Path(trained["staged_dir"])


def load_function_module(function: str, module: str):
    """A module of a function's folder, imported by path under a unique name (the folders are not packages)."""
    import importlib.util
    import sys

    from localdev.services import FUNCTIONS_DIR

    name = f"{function}__{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FUNCTIONS_DIR / function / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses look their module up while the class is being built
        spec.loader.exec_module(loaded)
    return sys.modules[name]


def watcher_module(name: str):
    """A module of registry_watcher, imported the way functions-framework does: its folder first on sys.path,
    so the modules import each other by their plain names and tests share one copy of each."""
    return _unit_module("registry_watcher", name)


def redeploy_module(name: str):
    """A module of the redeploy, imported the same way (the two folders share no module name but main)."""
    return _unit_module("redeploy", name)


def retrain_module(name: str):
    """A module of the retrain check, imported the same way (its module names are its own)."""
    return _unit_module("retrain", name)


def feedback_module(name: str):
    """A module of feedback, imported the same way (feedback_service imports monitoring_report by its name)."""
    return _unit_module("feedback", name)


def _unit_module(function: str, name: str):
    import importlib
    import sys

    from localdev.services import FUNCTIONS_DIR

    folder = str(FUNCTIONS_DIR / function)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def wrong_shape_onnx() -> bytes:
    """A valid ONNX model that is not the contract's: float in, float out."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def production_changed(version: str, model_uri: str, event_id: str | None = None) -> events.ProductionChanged:
    """The event the watcher publishes when `version`, staged at `model_uri`, becomes production."""
    return events.ProductionChanged(
        event_id=event_id or f"e{version}",
        model_name="yelp-sentiment",
        model_version=version,
        mlflow_run_id="r",
        model_uri=model_uri,
        sha256="0" * 64,
        previous_version=None,
    )
