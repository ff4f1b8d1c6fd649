"""The consumer of `model-production-changed`: redeploy `predict` on the staged version, once per change.

Delivery is at least once. A duplicate of the event that already serves, an event superseded by a newer
promotion, or one whose deploy another delivery is running, is acknowledged and changes nothing. An event whose
model_uri is not its version's folder in the serving bucket is refused: acknowledged, logged and recorded. An
event that arrives while another event's deploy runs raises, so it is delivered again once that deploy is done.
A failed deploy raises, so Pub/Sub delivers again; after the subscription's maximum attempts the message goes to
the dead-letter topic. An event that can never be processed (malformed) raises too, and ends there (redeploy_service).

What to do is redeploy_decisions.decide; this is the one place its effects happen: the deploy itself, and each
decision committed to the deployment document as a compare-and-swap.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

from deployers import Deployed, Deployer, DeployError, Split
from redeploy_decisions import (
    Action,
    Continued,
    Delivered,
    Evidence,
    Failed,
    Live,
    Move,
    Plan,
    Policy,
    Succeeded,
    decide,
)

from sentiment_core import logs
from sentiment_core.deployment_store import DeploymentStore
from sentiment_core.deployments import Decision
from sentiment_core.events import ProductionChanged

logger = logging.getLogger("sentiment.redeploy")

# Moves one delivery applies at most: a rollback then a new candidate is two; more means the document keeps
# changing under it, and the next delivery (or the watcher's re-announcement) carries on.
MAX_MOVES = 4


class DeployBusy(RuntimeError):
    """Another event's deploy is running: raised so that Pub/Sub delivers this event again later."""


@dataclasses.dataclass
class Redeployer:
    store: DeploymentStore
    deployer: Deployer
    policy: Policy

    def handle(self, event: ProductionChanged) -> Action:
        """What was done: deployed, rolled_back, traffic_moved, already_serving, superseded, in_progress,
        other_model or refused. Moves are applied until what serves is what the deployment document asks for."""
        fields = {"model_version": event.model_version, "event_id": event.event_id}
        delivery = uuid.uuid4().hex  # owns the deploy lease this delivery may take
        live = None
        if event.model_name == self.policy.model_name:  # another model's event is acknowledged untouched
            split = self.deployer.current_split()  # DeployError: raised, Pub/Sub delivers again
            live = Live(split.stable, split.candidate, split.percent) if split is not None else None
        decision = self._decide(Delivered(event, delivery, live))
        if decision.action is Action.OTHER_MODEL:
            logger.warning("event %s for model %s ignored: %s", event.event_id, event.model_name, decision.detail)
            return decision.action
        if decision.action is Action.REFUSED:
            self._log_refused(decision)
            return decision.action
        if decision.action is Action.BUSY:
            logger.info("event %s waits: %s", event.event_id, decision.detail, extra=fields)
            raise DeployBusy(decision.detail)
        if decision.action is not Action.DEPLOY:
            logger.info("event %s: %s, nothing to deploy", event.event_id, decision.action, extra=fields)
            return decision.action
        done = decision.action
        for _ in range(MAX_MOVES):
            done = self._apply(decision.plan, delivery).action
            decision = self._decide(Continued(delivery))
            if decision.action is Action.REFUSED:
                self._log_refused(decision)
            if decision.action is not Action.DEPLOY:
                break
        else:
            self._decide(Failed(event, delivery, "the deployment document kept changing; the next delivery goes on"))
        return done

    @staticmethod
    def _log_refused(decision: Decision[Action]) -> None:
        """ERROR, with the deploy gate's event code and a reason: an event naming another folder means someone
        other than the watcher wrote it or the document (docs/promotion.md), which a person should look into."""
        (entry,) = decision.history
        logger.error(
            "event %s refused: %s",
            decision.event_id,
            decision.detail,
            extra={
                "model_version": entry.version,
                "event_id": decision.event_id,
                "reason": entry.reason,
                logs.EVENT_FIELD: logs.DEPLOY_REFUSED,
            },
        )

    def _apply(self, plan: Plan, delivery: str) -> Decision[Action]:
        """One move, then its outcome recorded (a failure recorded, and raised for Pub/Sub to deliver again)."""
        event = plan.event
        fields = {"model_version": event.model_version, "event_id": event.event_id, "move": plan.move.value}
        try:
            deployed = self._move(plan)
        except DeployError as exc:
            self._decide(Failed(event, delivery, str(exc)))
            fields[logs.EVENT_FIELD] = logs.DEPLOY_FAILED
            logger.error(
                "%s of version %s failed: %s; Pub/Sub will deliver the event again and, after the "
                "subscription's maximum attempts, move it to the dead-letter topic",
                plan.move.value,
                event.model_version,
                exc,
                extra=fields,
            )
            raise
        stable = deployed.split.stable if deployed.split is not None else None
        decision = self._decide(Succeeded(event, delivery, deployed.revision, deployed.url, plan, stable))
        logger.info(
            "%s (revision %s)",
            decision.detail or f"version {event.model_version} serving",
            deployed.revision,
            extra=fields,
        )
        return decision

    def _move(self, plan: Plan) -> Deployed:
        if plan.move is Move.DEPLOY:
            return self.deployer.deploy(plan.event)
        if plan.move is Move.CANDIDATE:
            return self.deployer.deploy_candidate(plan.event, plan.percent)
        split = Split(plan.stable_revision, plan.candidate_revision, plan.percent)
        if plan.move is Move.SPLIT:
            self.deployer.set_split(split)
            return Deployed(revision=split.candidate, url="", split=split)
        if plan.move is Move.COMPLETE:
            return self.deployer.complete(split)
        return self.deployer.roll_back(split)  # ROLL_BACK, DRAIN

    def _decide(self, evidence: Evidence) -> Decision[Action]:
        return self.store.apply(lambda state, now: decide(state, evidence, self.policy, now))
