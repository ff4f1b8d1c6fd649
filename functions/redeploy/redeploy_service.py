"""The redeploy's settings and its handling of one Pub/Sub delivery; main.py wires these to functions-framework."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from deployers import CloudRunDeployer, Deployer, LocalDeployer
from redeploy import Redeployer

from sentiment_core import config, logs
from sentiment_core.deployment_store import StateSettings
from sentiment_core.events import InvalidEvent, from_pubsub_message

logger = logging.getLogger("sentiment.redeploy")

DEPLOYERS = ("cloud_run", "local")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every variable Terraform (or the local stack) sets on the redeploy; all parsed at start-up.

    Only what the redeploy uses: the deployment document, the serving bucket it deploys from and predict's
    service. No MLflow setting or secret.
    """

    state: StateSettings
    serving_bucket: str
    deployer: str
    predict_service: str | None
    cloud_run_endpoint: str | None
    local_router_url: str | None
    local_predict_url: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        deployer = config.optional("DEPLOYER", "cloud_run", env)
        if deployer not in DEPLOYERS:
            raise config.ConfigError(f"DEPLOYER must be one of {', '.join(DEPLOYERS)}, got {deployer!r}")
        return cls(
            state=StateSettings.from_env(env),
            serving_bucket=_bucket_name(config.required("SERVING_BUCKET", env)),
            deployer=deployer,
            predict_service=config.required("PREDICT_SERVICE", env) if deployer == "cloud_run" else None,
            cloud_run_endpoint=config.optional("CLOUD_RUN_ENDPOINT", "", env) or None,
            local_router_url=config.required("LOCAL_ROUTER_URL", env) if deployer == "local" else None,
            local_predict_url=config.required("LOCAL_PREDICT_URL", env) if deployer == "local" else None,
        )

    def make_deployer(self) -> Deployer:
        """The deployer DEPLOYER names: Cloud Run's Admin API, or the local stack's router."""
        if self.deployer == "local":
            return LocalDeployer(self.local_router_url, self.local_predict_url)
        client = None
        if self.cloud_run_endpoint:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import run_v2

            # A local stand-in of the Admin API (tests): no Google credentials, plain HTTP on loopback.
            client = run_v2.ServicesClient(
                credentials=AnonymousCredentials(),
                transport="rest",
                client_options={"api_endpoint": self.cloud_run_endpoint},
            )
        return CloudRunDeployer(self.predict_service, client=client)


def _bucket_name(setting: str) -> str:
    """SERVING_BUCKET as `name` or `gs://name`, as the watcher reads it: the one bucket versions deploy from."""
    name = setting.removeprefix("gs://").strip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]", name):
        raise config.ConfigError(f"SERVING_BUCKET must be a bucket name (or gs://name), got {setting!r}")
    return name


def handle(event: Any, redeployer: Callable[[], Redeployer]) -> None:
    """One push delivery: the event inside the message, redeployed once; raises to have Pub/Sub deliver again."""
    try:
        change = from_pubsub_message((event.get_data() or {}).get("message"))
    except (InvalidEvent, AttributeError) as exc:
        log_unprocessable(event, exc)
        if isinstance(exc, AttributeError):  # a body that is no push envelope: as unprocessable as a bad event
            raise InvalidEvent(f"the delivery is not a Pub/Sub push ({exc})") from exc
        raise
    redeployer().handle(change)


def log_unprocessable(event: Any, exc: Exception) -> None:
    """The line an operator finds when a message lands in the dead-letter topic."""
    event_id = event.get("id") if hasattr(event, "get") else None
    logger.error(
        "event %s cannot be processed (%s); Pub/Sub retries it and then moves it to the dead-letter topic",
        event_id,
        exc,
        extra={"event_id": event_id, logs.EVENT_FIELD: logs.EVENT_UNPROCESSABLE},
    )
