"""One reconcile tick: make what is announced for serving match what the registry names as production.

Observe, decide, act, record. The decisions are watcher_decisions.decide (pure); this module observes the
registry, runs the gate and staging, publishes, and commits every decision to the deployment document as one
compare-and-swap: the one place where a decision's effects happen. A crash anywhere leaves either a claim that
expires or an event in the outbox that the next tick publishes again with the same event id (the consumer is
idempotent).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import gate
from staging import StagingConflict
from watcher_decisions import (
    Abandoned,
    Action,
    Confirmed,
    Evaluation,
    Evidence,
    Looked,
    Measured,
    Policy,
    RegistryUpdated,
    Rejected,
    Staged,
    decide,
    judge_evaluation,
)

from sentiment_core import logs
from sentiment_core.contract import PRODUCTION_ALIAS
from sentiment_core.deployment_store import DeploymentStore, StateUnavailable
from sentiment_core.deployments import Decision, Desired, HistoryKind, Rollout, Serving, traffic_settled
from sentiment_core.events import ProductionChanged
from sentiment_core.monitoring import Reference
from sentiment_core.registry import ModelVersion, RegistryClient
from sentiment_core.rollout import VersionCounts

logger = logging.getLogger("sentiment.watcher")


class Publisher(Protocol):
    def publish(self, event: ProductionChanged) -> str: ...


class Stager(Protocol):
    def stage(
        self,
        model_bytes: bytes,
        *,
        model_name: str,
        version: str,
        run_id: str,
        threshold: float,
        reference: Reference | None = None,
    ) -> str: ...


class Evaluator(Protocol):
    """The watcher's own evaluation of a candidate beside the serving version (evaluation.Evaluator)."""

    def evaluate(self, model_bytes: bytes, serving: Serving | None) -> Evaluation: ...


class Counts(Protocol):
    def __call__(self, version: str, since: datetime) -> VersionCounts: ...


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the event; it stays in the outbox for the next tick."""


@dataclasses.dataclass(frozen=True)
class TickResult:
    """The tick's answer: what it did and where things stand."""

    action: Action
    desired_version: str | None
    target_version: str | None
    serving_version: str | None
    detail: str = ""
    event_id: str | None = None
    rollout: dict[str, Any] | None = None  # when the tick ran the rollout policy: its decision and the share

    @classmethod
    def of(cls, decision: Decision[Action], measured: Rollout | None = None) -> TickResult:
        state = decision.state
        last = measured.last_decision if measured is not None else None
        return cls(
            action=decision.action,
            desired_version=state.desired.version if state.desired else None,
            target_version=state.target.version if state.target else None,
            serving_version=state.serving.version if state.serving else None,
            detail=decision.detail,
            event_id=decision.event_id,
            rollout=None
            if last is None
            else {
                "action": last.action.value,
                "reason": last.reason.value,
                "detail": last.detail,
                "state": measured.state.value,
                "candidate_percent": measured.candidate_percent,
            },
        )

    def to_api(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "action": self.action.value}


@dataclasses.dataclass
class Reconciler:
    registry: RegistryClient
    store: DeploymentStore
    stager: Stager
    publisher: Publisher
    policy: Policy
    min_val_accuracy: float
    counts: Counts  # a version's window counters since a time (sentiment_core.store.window_evidence)
    # Keeps a version's monitoring reference where the functions read it (sentiment_core.store.save_reference).
    save_reference: Callable[[str, Reference], None]
    # Scores the candidate on the watcher's evaluation set (evaluation.Evaluator): the one check whose figures
    # the uploading run cannot choose.
    evaluator: Evaluator
    max_calibration_error: float = gate.DEFAULT_MAX_CALIBRATION_ERROR
    min_behaviour_pass_rate: float = gate.DEFAULT_MIN_BEHAVIOUR_PASS_RATE
    fetch: Callable[[RegistryClient, ModelVersion], gate.Candidate] = gate.fetch_candidate

    def tick(self, trigger: str, retry_refused: str | None = None) -> TickResult:
        """Reconcile once. retry_refused: a version promoted again (webhook), so a past refusal no longer holds."""
        republished = self._flush_outbox()
        self._tell_registry()  # an ended rollout the registry does not show yet (a crash after it ended)
        found = self.registry.production_version(self.policy.model_name)  # RegistryError: nothing was decided
        claimant = uuid.uuid4().hex
        desired = Desired(found.version, found.run_id, found.chosen_by, found.promotion) if found else None
        decision = self._decide(Looked(desired, trigger, claimant, retry_refused, republished))
        measured = None
        if decision.action is Action.MEASURE:
            decision = self._decide(self._measure(decision.state.rollout, found, trigger))
            measured = decision.state.rollout
            self._log_rollout(decision)
        if decision.action is Action.CLAIM:
            decision = self._decide(self._check(found, desired, claimant, trigger, decision.state.serving))
        if decision.action is Action.REFUSED:
            kept = decision.state.in_service
            logger.warning(
                "refused version %s: %s; %s",
                found.version,
                decision.detail,
                f"version {kept} keeps serving" if kept else "no version is serving",
                extra={
                    logs.EVENT_FIELD: logs.DEPLOY_REFUSED,
                    "reason": decision.state.refused.reason if decision.state.refused else None,
                    "model_version": found.version,
                    "trigger": trigger,
                },
            )
        if decision.action is Action.PUBLISH:
            outbox = decision.state.outbox
            fields = {"model_version": outbox.model_version, "event_id": decision.event_id}
            if any(entry.kind is HistoryKind.STAGED for entry in decision.history):
                logger.info("staged version %s at %s", outbox.model_version, outbox.model_uri, extra=fields)
            elif measured is None:  # announced again: an event lost, or a rollout superseded
                logger.warning("%s: announcing version %s", decision.detail, outbox.model_version, extra=fields)
            decision = self._publish(outbox)
        ended = decision.state.rollout
        if ended is not None and not ended.in_progress and not ended.registry_updated:
            self._tell_registry()
        return TickResult.of(decision, measured)

    def _measure(self, rollout: Rollout, found: ModelVersion | None, trigger: str) -> Measured:
        """Both versions' counts since the rollout began: the same window for both."""
        stable, candidate = self._counts_of(rollout.stable_version, rollout.candidate_version, rollout.started_at)
        return Measured(stable, candidate, found.version if found else None, trigger)

    def _counts_of(self, stable: str, candidate: str, since: datetime) -> tuple[VersionCounts, VersionCounts]:
        from sentiment_core.store import StoreUnavailable

        try:
            return self.counts(stable, since), self.counts(candidate, since)
        except StoreUnavailable as exc:
            raise StateUnavailable(f"the rollout's counters could not be read: {exc}") from exc

    def _log_rollout(self, decision: Decision[Action]) -> None:
        rollout = decision.state.rollout
        last = rollout.last_decision
        if last is None:
            return
        fields = {"model_version": rollout.candidate_version, "rollout_action": last.action.value}
        if rollout.back_to_stable:
            fields |= {logs.EVENT_FIELD: logs.ROLLOUT_ROLLED_BACK, "reason": last.reason.value}
        message = "rollout of version %s beside %s: %s (%s) at %d%%: %s"
        values = (rollout.stable_version, last.action.value, last.reason.value, rollout.candidate_percent, last.detail)
        level = logging.WARNING if rollout.back_to_stable else logging.INFO
        logger.log(level, message, rollout.candidate_version, *values, extra=fields)

    def _tell_registry(self) -> None:
        """The alias and the versions' tags after an ended rollout, then the document says they are written.

        Each write sets a value, so doing them again after a crash is harmless. The alias goes back to the stable
        version only while it still names the candidate: a person may have promoted another version since. A
        completion is told once the candidate has all the traffic, not when it is decided.
        """
        state = self.store.read().state
        rollout = state.rollout
        if rollout is None or rollout.in_progress or rollout.registry_updated:
            return
        if not rollout.back_to_stable and not traffic_settled(state):
            return
        name, candidate, stable = self.policy.model_name, rollout.candidate_version, rollout.stable_version
        reason = rollout.reason.value if rollout.reason else ""
        if rollout.back_to_stable:
            current = self.registry.production_version(name)
            moved = current is not None and current.version == candidate
            if moved:
                self.registry.set_alias(name, PRODUCTION_ALIAS, stable)
            self.registry.set_version_tag(name, candidate, "deployment_status", "rolled_back")
            self.registry.set_version_tag(name, candidate, "deployment_reason", reason)
            detail = f"version {candidate} tagged rolled_back ({reason})"
            detail += f"; alias {PRODUCTION_ALIAS} moved back to version {stable}" if moved else ""
        else:
            self.registry.set_version_tag(name, candidate, "deployment_status", "serving")
            self.registry.set_version_tag(name, candidate, "deployment_reason", reason)
            self.registry.set_version_tag(name, stable, "deployment_status", "retired")
            detail = f"version {candidate} tagged serving, version {stable} retired"
        self._decide(RegistryUpdated(candidate, rollout.started_at, detail))
        logger.info("registry updated: %s", detail, extra={"model_version": candidate})

    def _check(
        self, found: ModelVersion, desired: Desired, claimant: str, trigger: str, serving_now: Serving | None
    ) -> Staged | Rejected:
        """The deploy gate, the watcher's own evaluation beside the serving version, then staging, then (when a
        rollout will start) both versions' counts so far this hour: what they found, as evidence for the next
        decision."""
        version = found.version
        logger.info("checking version %s", version, extra={"model_version": version, "trigger": trigger})
        try:
            candidate = self.fetch(self.registry, found)
            verdict = gate.judge(
                candidate, self.min_val_accuracy, self.max_calibration_error, self.min_behaviour_pass_rate
            )
            if not verdict.accepted:
                return Rejected(claimant, version, verdict.reason, verdict.detail, trigger)
            evaluation = self.evaluator.evaluate(candidate.model_bytes, serving_now)
            refusal = judge_evaluation(evaluation, self.policy.evaluation)
            if refusal is not None:
                return Rejected(claimant, version, *refusal, trigger, evaluation)
            try:
                uri = self.stager.stage(
                    candidate.model_bytes,
                    model_name=self.policy.model_name,
                    version=version,
                    run_id=found.run_id,
                    threshold=verdict.threshold,
                    reference=verdict.reference,
                )
            except StagingConflict as exc:
                return Rejected(claimant, version, "staging_conflict", str(exc), trigger)
            if verdict.reference is not None:
                # Before the staged version is recorded: a crash here leaves the claim to expire, and the next
                # tick writes it again, so no version is announced without its reference.
                self._save_reference(version, verdict.reference)
        except Exception:
            self._release(claimant)  # let the next tick try at once rather than after the claim expires
            raise
        baseline, baseline_at = None, None
        serving = serving_now.version if serving_now else None
        if serving is not None and serving != version:
            baseline_at = datetime.now(UTC)
            baseline = self._counts_of(serving, version, baseline_at)
        event_id = uuid.uuid4().hex
        return Staged(
            claimant, desired, candidate.logged_sha256, uri, event_id, trigger, baseline, baseline_at, evaluation
        )

    def _save_reference(self, version: str, reference: Reference) -> None:
        from sentiment_core.store import StoreUnavailable

        try:
            self.save_reference(version, reference)
        except StoreUnavailable as exc:
            raise StateUnavailable(f"the reference of version {version} could not be saved: {exc}") from exc

    def _release(self, claimant: str) -> None:
        try:
            self._decide(Abandoned(claimant))
        except Exception:  # the claim expires on its own; the original error is the one to report
            logger.exception("could not release the claim of tick %s", claimant)

    def _flush_outbox(self) -> str | None:
        """Publish an event a previous run committed but could not confirm; its event id, if any."""
        pending = self.store.read().state.outbox
        if pending is None:
            return None
        logger.warning("publishing event %s left in the outbox", pending.event_id, extra={"event_id": pending.event_id})
        self._publish(pending)
        return pending.event_id

    def _publish(self, event: ProductionChanged) -> Decision[Action]:
        try:
            message_id = self.publisher.publish(event)
        except Exception as exc:  # grpc and timeout errors alike: the outbox keeps the event
            raise PublishError(f"event {event.event_id} not confirmed by Pub/Sub: {exc}") from exc
        decision = self._decide(Confirmed(event.event_id, message_id))
        logger.info(
            "published event %s for version %s",
            event.event_id,
            event.model_version,
            extra={"model_version": event.model_version, "event_id": event.event_id, "message_id": message_id},
        )
        return decision

    def _decide(self, evidence: Evidence) -> Decision[Action]:
        return self.store.apply(lambda state, now: decide(state, evidence, self.policy, now))
