"""The consumer of `model-production-changed`: redeploy `predict` on the staged version, once per change.

Delivery is at least once. A duplicate of the event that already serves, an event superseded by a newer
promotion, or one whose deploy another delivery is running, is acknowledged and changes nothing. A failed deploy
raises, so Pub/Sub delivers again; after the subscription's maximum attempts the message goes to the dead-letter
topic. An event that can never be processed (malformed) raises too, and ends there.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from deployers import Deployer, DeployError
from events import ProductionChanged
from state import Decision, Lease, State, StateStore, history_entry, utc_now

logger = logging.getLogger("sentiment.watcher")

DEPLOY_LEASE_S = 900.0  # the function's timeout (540 s) plus margin: a crashed deploy blocks at most this long


@dataclasses.dataclass
class Redeployer:
    state: StateStore
    deployer: Deployer
    model_name: str
    lease_s: float = DEPLOY_LEASE_S

    def handle(self, event: ProductionChanged) -> str:
        """What was done: deployed, rolled_back, already_serving, superseded, in_progress or other_model."""
        fields = {"model_version": event.model_version, "event_id": event.event_id}
        if event.model_name != self.model_name:
            logger.warning("event for model %s ignored: this watcher serves %s", event.model_name, self.model_name)
            return "other_model"
        outcome: dict[str, Any] = {}
        self.state.update(lambda s: self._start(s, event, outcome))
        if "lease" not in outcome:
            logger.info("event %s: %s, nothing to deploy", event.event_id, outcome["action"], extra=fields)
            return outcome["action"]
        lease: Lease = outcome["lease"]
        try:
            deployed = self.deployer.deploy(event)
        except DeployError as exc:
            error = str(exc)
            self.state.update(lambda s: self._finish(s, event, lease, "failed", {"error": error}))
            logger.error(
                "redeploy to version %s failed: %s; Pub/Sub will deliver the event again and, after the "
                "subscription's maximum attempts, move it to the dead-letter topic",
                event.model_version,
                exc,
                extra=fields,
            )
            raise
        kind = "deployed"
        previous = outcome.get("serving")
        if previous and int(previous) > int(event.model_version):
            kind = "rolled_back"
        self.state.update(
            lambda s: self._finish(s, event, lease, kind, {"revision": deployed.revision, "url": deployed.url})
        )
        logger.info("version %s serving (%s, revision %s)", event.model_version, kind, deployed.revision, extra=fields)
        return kind

    def _start(self, s: State, event: ProductionChanged, outcome: dict[str, Any]) -> Decision:
        outcome.clear()
        outcome["serving"] = s.version("serving")
        serving = s.serving or {}
        if serving.get("version") == event.model_version and serving.get("sha256") == event.sha256:
            outcome["action"] = "already_serving"
            return None
        if s.target and s.target.get("event_id") != event.event_id:
            outcome["action"] = "superseded"
            return None
        if s.deploying and s.deploying.key == event.event_id and s.deploying.active(utc_now()):
            outcome["action"] = "in_progress"
            return None
        outcome["lease"] = Lease.new(event.event_id, self.lease_s)
        return dataclasses.replace(s, deploying=outcome["lease"]), []

    def _finish(self, s: State, event: ProductionChanged, lease: Lease, kind: str, fields: dict) -> Decision:
        deploying = None if s.deploying and s.deploying.owner == lease.owner else s.deploying
        entry = history_entry(kind, event.model_version, event_id=event.event_id, **fields)
        if kind == "failed":
            return dataclasses.replace(s, deploying=deploying), [entry]
        serving = {
            "version": event.model_version,
            "run_id": event.mlflow_run_id,
            "sha256": event.sha256,
            "model_uri": event.model_uri,
            "event_id": event.event_id,
            "deployed_at": utc_now(),
            **fields,
        }
        return dataclasses.replace(s, serving=serving, deploying=deploying), [entry]
