"""The Pub/Sub event `model-production-changed` (docs/architecture.md): one schema for publisher and consumer.

registry_watcher publishes it (and keeps it in the deployment document's outbox until Pub/Sub confirms it); the
redeploy consumes it. Both bundles carry this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any

TOPIC = "model-production-changed"
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")


class InvalidEvent(ValueError):
    """An event that can never be processed: retrying it cannot help, so it ends in the dead-letter topic."""


@dataclasses.dataclass(frozen=True)
class ProductionChanged:
    """Data of one event (contract field names)."""

    event_id: str
    model_name: str
    model_version: str
    mlflow_run_id: str
    model_uri: str
    sha256: str
    previous_version: str | None

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    def attributes(self) -> dict[str, str]:
        return {"model_name": self.model_name, "model_version": self.model_version}

    @classmethod
    def from_dict(cls, data: Any) -> ProductionChanged:
        """The event in a message's data, checked field by field; InvalidEvent says what is wrong."""
        if not isinstance(data, dict):
            raise InvalidEvent("event data must be a JSON object")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise InvalidEvent(f"event data lacks {', '.join(missing)}")
        for name in names:
            value = data[name]
            if name == "previous_version" and value is None:
                continue
            if not isinstance(value, str) or not value:
                raise InvalidEvent(f"{name} must be a non-empty string")
        if not _VERSION.match(data["model_version"]):
            raise InvalidEvent(f"model_version must be a positive integer, got {data['model_version']!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]):
            raise InvalidEvent("sha256 must be 64 hex digits")
        if not data["model_uri"].startswith(("gs://", "file://", "/")):
            raise InvalidEvent(f"model_uri must name a staged folder, got {data['model_uri']!r}")
        return cls(**{name: data[name] for name in names})


def staged_uri(bucket: str, model_name: str, version: str) -> str:
    """The one folder a version may be served from: `gs://<bucket>/<model>/v<version>` (what the watcher stages)."""
    return f"gs://{bucket}/{model_name}/v{version}"


def staged_in(event: ProductionChanged, bucket: str) -> bool:
    """Whether the event names exactly its own version's staged folder in the serving bucket (a trailing slash
    names the same folder). Anything else (another bucket, another version's folder, a local path) is refused:
    an event is only as trustworthy as whoever could write it, and only the watcher writes that bucket."""
    expected = staged_uri(bucket, event.model_name, event.model_version)
    return event.model_uri in (expected, f"{expected}/")


def from_pubsub_message(message: Any) -> ProductionChanged:
    """The event inside a Pub/Sub message as a CloudEvent delivers it: {"data": base64, "attributes": {...}}."""
    if not isinstance(message, dict) or "data" not in message:
        raise InvalidEvent("the CloudEvent carries no Pub/Sub message data")
    try:
        decoded = json.loads(base64.b64decode(message["data"], validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidEvent(f"message data is not base64 JSON: {exc}") from exc
    return ProductionChanged.from_dict(decoded)
