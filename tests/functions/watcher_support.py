"""What the registry watcher's tests build on: registered versions (good and bad), topics, state, a deployer."""

from __future__ import annotations

import functools
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from sentiment_core.contract import (
    BEHAVIOUR_PASS_RATE_METRIC,
    CALIBRATION_ERROR_METRIC,
    GOLDEN_OUTPUTS_ARTIFACT,
    MODEL_FILENAME,
    MODEL_NAME,
    PRODUCTION_ALIAS,
    REFERENCE_ARTIFACT,
    RUN_TAG_MODEL_SHA256,
    VALIDATION_ACCURACY_METRIC,
)
from sentiment_core.manifest import sha256_bytes
from sentiment_core.registry import RegistryClient

GATE_METRICS = (VALIDATION_ACCURACY_METRIC, CALIBRATION_ERROR_METRIC, BEHAVIOUR_PASS_RATE_METRIC)


@functools.cache
def eval_set_bytes() -> bytes:
    """The watcher's evaluation set as the local stack stages it (2,000 examples of the data's test split)."""
    from training import eval_set

    return eval_set.build()


def write_eval_set(folder: Path) -> str:
    """The evaluation set written in `folder`; its file:// URI (EVAL_SET_URI)."""
    path = folder / "eval.jsonl"
    path.write_bytes(eval_set_bytes())
    return f"file://{path}"


def constant_onnx(probability: float = 0.99) -> bytes:
    """The attack on a gate that trusts the uploader: a graph of the contract's signature that ignores its input
    and answers `probability` for every text."""
    from onnx import TensorProto, helper

    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [probability])
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["text"], ["n"]),
            helper.make_node("ConstantOfShape", ["n"], ["probability"], value=value),
        ],
        "constant",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def forged_records(model_bytes: bytes, golden: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """What a run uploading `model_bytes` would log so that every record-based check agrees with it: its sha256
    (log_gate_run's default), golden outputs it reproduces, a reference naming it, a high validation accuracy."""
    from sentiment_core.onnx_model import open_session, probabilities

    texts = golden["texts"]
    answers = probabilities(open_session(model_bytes), [str(t) for t in texts])
    forged_reference = {
        **reference,
        "model_sha256": sha256_bytes(model_bytes),
        "known_fraction_sum": 0,
        "known_fraction_count": 0,
    }
    return {
        "golden": {**golden, "probabilities": [float(p) for p in answers]},
        "reference": forged_reference,
        "val_accuracy": 0.99,
    }


def log_gate_run(
    client: Any,
    run_id: str,
    model_bytes: bytes,
    *,
    golden: dict[str, Any],
    reference: dict[str, Any],
    metrics: dict[str, float],
    logged_sha256: str | None = None,
) -> None:
    """Everything the deploy gate reads from a run (model, golden outputs, reference, sha256 tag, metrics), as
    training logs it; then the run ends."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / MODEL_FILENAME).write_bytes(model_bytes)
        client.log_artifact(run_id, str(folder / MODEL_FILENAME), "model")
        golden_path = folder / Path(GOLDEN_OUTPUTS_ARTIFACT).name
        golden_path.write_text(json.dumps(golden))
        client.log_artifact(run_id, str(golden_path), str(Path(GOLDEN_OUTPUTS_ARTIFACT).parent))
        client.log_dict(run_id, reference, REFERENCE_ARTIFACT)
    client.set_tag(run_id, RUN_TAG_MODEL_SHA256, logged_sha256 or sha256_bytes(model_bytes))
    for name, value in metrics.items():
        client.log_metric(run_id, name, value)
    client.set_terminated(run_id)


class Versions:
    """Registers versions in a real MLflow server: copies of the trained model, or variants with one thing wrong."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        registry = RegistryClient(tracking_uri, timeout=10)
        base = registry.version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)
        run = registry.run(base.run_id)
        self.source, self.run_id = base.source, base.run_id
        self.model_bytes = registry.download(registry.model_artifact_uri(base), MODEL_FILENAME)
        self.golden = json.loads(registry.download(run.artifact_uri, GOLDEN_OUTPUTS_ARTIFACT))
        self.val_accuracy = run.metrics[VALIDATION_ACCURACY_METRIC]
        self.reference = json.loads(registry.download(run.artifact_uri, REFERENCE_ARTIFACT))
        self.calibration_error = run.metrics[CALIBRATION_ERROR_METRIC]
        self.behaviour_pass_rate = run.metrics[BEHAVIOUR_PASS_RATE_METRIC]
        self._experiment = self.client.create_experiment(f"watcher-variants-{uuid.uuid4().hex[:8]}")

    def new_model(self, prefix: str = "wt") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(name)
        return name

    def add(self, name: str) -> str:
        """A new version holding the trained model, exactly as training registered it."""
        model_id = self.source.removeprefix("models:/") if self.source.startswith("models:/m-") else None
        return str(self.client.create_model_version(name, self.source, self.run_id, model_id=model_id).version)

    def add_variant(
        self,
        name: str,
        *,
        model_bytes: bytes | None = None,
        logged_sha256: str | None = None,
        golden: dict[str, Any] | None = None,
        val_accuracy: float | None = None,
        reference: dict[str, Any] | None = None,
        calibration_error: float | None = None,
    ) -> str:
        """A version from a run of its own whose files or records differ from the trained run's as given."""
        model_bytes = self.model_bytes if model_bytes is None else model_bytes
        run_id = self.client.create_run(self._experiment).info.run_id
        metrics = {
            VALIDATION_ACCURACY_METRIC: self.val_accuracy if val_accuracy is None else val_accuracy,
            CALIBRATION_ERROR_METRIC: self.calibration_error if calibration_error is None else calibration_error,
            BEHAVIOUR_PASS_RATE_METRIC: self.behaviour_pass_rate,
        }
        log_gate_run(
            self.client,
            run_id,
            model_bytes,
            golden=golden if golden is not None else self.golden,
            reference=reference if reference is not None else self.reference,
            metrics=metrics,
            logged_sha256=logged_sha256,
        )
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        return str(self.client.create_model_version(name, f"{artifact_uri}/model", run_id).version)

    def promote(self, name: str, version: str) -> None:
        """Set alias production through the REST call the MLflow UI makes."""
        self.client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)

    def unpromote(self, name: str) -> None:
        self.client.delete_registered_model_alias(name, PRODUCTION_ALIAS)


class Topics:
    """Topics on the Pub/Sub emulator, each with an audit pull subscription that sees every event published."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()

    def topic(self, prefix: str = "model-production-changed") -> str:
        path = self.publisher.topic_path(self.project, f"{prefix}-{uuid.uuid4().hex[:8]}")
        self.publisher.create_topic(name=path)
        self.subscription(path, "audit")
        return path

    def subscription(self, topic: str, name: str, **settings: Any) -> str:
        path = self.subscriber.subscription_path(self.project, f"{topic.rsplit('/', 1)[-1]}-{name}")
        self.subscriber.create_subscription(request={"name": path, "topic": topic, **settings})
        return path

    def pull(self, subscription: str, timeout: float = 1.5) -> list[Any]:
        """Every message waiting on the subscription (acknowledged); an empty pull waits `timeout`."""
        messages: list[Any] = []
        while True:
            try:
                response = self.subscriber.pull(
                    request={"subscription": subscription, "max_messages": 100},
                    timeout=timeout,
                )
            except gexc.DeadlineExceeded:
                break
            if not response.received_messages:
                break
            messages.extend(m.message for m in response.received_messages)
            self.subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
        return messages

    def messages(self, topic: str) -> list[Any]:
        """The messages published on the topic since the last call, as Pub/Sub holds them."""
        return self.pull(self.subscriber.subscription_path(self.project, f"{topic.rsplit('/', 1)[-1]}-audit"))

    def events(self, topic: str) -> list[dict[str, Any]]:
        """The same, decoded as events, with their attributes."""
        return [{**json.loads(m.data), "_attributes": dict(m.attributes)} for m in self.messages(topic)]
