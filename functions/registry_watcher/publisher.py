"""Publishing `model-production-changed` events (sentiment_core.events) on Pub/Sub."""

from __future__ import annotations

from sentiment_core.events import ProductionChanged


class PubSubPublisher:
    """Publishes events and waits for the server's acknowledgement (an unconfirmed event stays in the outbox)."""

    def __init__(self, topic_path: str, timeout_s: float = 10.0) -> None:
        from google.cloud import pubsub_v1  # 0.5 s of import: only the processes that publish pay it

        self._client = pubsub_v1.PublisherClient()
        self._topic = topic_path
        self._timeout = timeout_s

    def publish(self, event: ProductionChanged) -> str:
        """The message id Pub/Sub assigned."""
        future = self._client.publish(self._topic, event.to_json(), **event.attributes())
        return future.result(timeout=self._timeout)
