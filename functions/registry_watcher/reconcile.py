"""One reconcile tick: make what is announced for serving match what the registry names as production.

desired (registry) -> claim (Firestore compare-and-swap) -> deploy gate -> staging (bucket) -> target + outbox
(one commit) -> publish -> outbox cleared. A crash anywhere leaves either a claim that expires or an event in
the outbox that the next tick publishes again with the same event id (the consumer is idempotent).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import gate
from events import ProductionChanged
from staging import StagingConflict
from state import Decision, Lease, State, StateStore, history_entry, utc_now

from sentiment_core.registry import ModelVersion, RegistryClient

logger = logging.getLogger("sentiment.watcher")

CLAIM_TTL_S = 300.0  # longer than a gate + staging of a large model; a crashed claimer blocks at most this long


class Publisher(Protocol):
    def publish(self, event: ProductionChanged) -> str: ...


class Stager(Protocol):
    def stage(self, model_bytes: bytes, *, model_name: str, version: str, run_id: str, threshold: float) -> str: ...


class PublishError(RuntimeError):
    """Pub/Sub did not confirm the event; it stays in the outbox for the next tick."""


@dataclasses.dataclass(frozen=True)
class TickResult:
    """The tick's answer: what it did and where things stand."""

    action: str
    desired_version: str | None
    target_version: str | None
    serving_version: str | None
    detail: str = ""
    event_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Reconciler:
    registry: RegistryClient
    state: StateStore
    stager: Stager
    publisher: Publisher
    model_name: str
    min_val_accuracy: float
    claim_ttl_s: float = CLAIM_TTL_S
    fetch: Callable[[RegistryClient, ModelVersion], gate.Candidate] = gate.fetch_candidate

    def tick(self, trigger: str, retry_refused: str | None = None) -> TickResult:
        """Reconcile once. retry_refused: a version promoted again (webhook), so a past refusal no longer holds."""
        republished = self._flush_outbox()
        desired = self.registry.production_version(self.model_name)  # RegistryError: nothing was decided
        outcome: dict[str, Any] = {}
        state = self.state.update(lambda s: self._decide(s, desired, retry_refused, trigger, outcome))
        action = outcome.get("action", "claimed")
        if action != "claimed":
            if republished and action == "up_to_date":
                action, outcome["event_id"] = "republished", republished
            return self._result(action, state, outcome)
        return self._promote(desired, outcome["claim"], state.target or state.serving, trigger)

    def _decide(
        self,
        s: State,
        desired: ModelVersion | None,
        retry_refused: str | None,
        trigger: str,
        outcome: dict[str, Any],
    ) -> Decision:
        """Pure: from the current state, what this tick does (outcome["action"]) and what it writes."""
        outcome.clear()
        history: list[dict[str, Any]] = []
        if desired is None:
            outcome["action"] = "no_production_version"
            outcome["detail"] = (
                f"no version of {self.model_name} has alias production or stage Production; "
                f"keeping version {s.version('target') or s.version('serving')} in service"
            )
            if s.desired is None and s.refused is None:
                return None
            history.append(history_entry("no_production_version", None, trigger=trigger, kept=s.version("target")))
            return dataclasses.replace(s, desired=None, refused=None), history

        wanted = {"version": desired.version, "run_id": desired.run_id, "chosen_by": desired.chosen_by}
        new = s if s.desired == wanted else dataclasses.replace(s, desired=wanted)
        if new.refused and (new.refused["version"] != desired.version or retry_refused == desired.version):
            new = dataclasses.replace(new, refused=None)  # promoting again, or another version, starts over
        if new.version("target") == desired.version:
            outcome["action"] = "up_to_date"
        elif new.refused:
            outcome["action"] = "refused_earlier"
            outcome["detail"] = f"{new.refused['reason']}: {new.refused['detail']}"
        elif new.claim and new.claim.active(utc_now()):
            outcome["action"] = "in_progress"
            outcome["detail"] = f"another run is staging version {new.claim.key}"
            return None  # leave the document to the claimer
        else:
            outcome["claim"] = Lease.new(desired.version, self.claim_ttl_s)
            new = dataclasses.replace(new, claim=outcome["claim"])
        return (new, history) if new != s else None

    def _promote(self, desired: ModelVersion, claim: Lease, current: dict | None, trigger: str) -> TickResult:
        version = desired.version
        logger.info("checking version %s", version, extra={"model_version": version, "trigger": trigger})
        try:
            candidate = self.fetch(self.registry, desired)
            verdict = gate.judge(candidate, self.min_val_accuracy)
            uri = None
            if verdict.accepted:
                try:
                    uri = self.stager.stage(
                        candidate.model_bytes,
                        model_name=self.model_name,
                        version=version,
                        run_id=desired.run_id,
                        threshold=verdict.threshold,
                    )
                except StagingConflict as exc:
                    verdict = gate.Verdict.refuse("staging_conflict", str(exc))
        except Exception:
            self._release(claim)  # let the next tick try at once rather than after the claim expires
            raise
        if not verdict.accepted:
            return self._refuse(desired, claim, verdict, trigger)

        event = ProductionChanged(
            event_id=uuid.uuid4().hex,
            model_name=self.model_name,
            model_version=version,
            mlflow_run_id=desired.run_id,
            model_uri=uri,
            sha256=candidate.logged_sha256,
            previous_version=(current or {}).get("version"),
        )
        target = {
            "version": version,
            "run_id": desired.run_id,
            "sha256": event.sha256,
            "model_uri": uri,
            "event_id": event.event_id,
            "staged_at": utc_now(),
        }

        def announce(s: State) -> Decision:
            if not s.claim or s.claim.owner != claim.owner:
                return None  # our claim expired and another run took over: it announces, not us
            staged = history_entry(
                "staged", version, trigger=trigger, model_uri=uri, sha256=event.sha256, event_id=event.event_id
            )
            return dataclasses.replace(s, target=target, outbox=dataclasses.asdict(event), claim=None), [staged]

        state = self.state.update(announce)
        if state.outbox is None or state.outbox["event_id"] != event.event_id:
            return self._result("in_progress", state, {"detail": "the claim on this version expired"})
        logger.info("staged version %s at %s", version, uri, extra={"model_version": version})
        self._publish(event)
        return self._result("published", self.state.read().state, {"event_id": event.event_id})

    def _refuse(self, desired: ModelVersion, claim: Lease, verdict: gate.Verdict, trigger: str) -> TickResult:
        refused = {"version": desired.version, "reason": verdict.reason, "detail": verdict.detail, "at": utc_now()}

        def record(s: State) -> Decision:
            if not s.claim or s.claim.owner != claim.owner:
                return None
            entry = history_entry(
                "refused", desired.version, trigger=trigger, reason=verdict.reason, detail=verdict.detail
            )
            return dataclasses.replace(s, refused=refused, claim=None), [entry]

        state = self.state.update(record)
        logger.warning(
            "refused version %s: %s (%s); version %s keeps serving",
            desired.version,
            verdict.reason,
            verdict.detail,
            state.version("target") or state.version("serving"),
            extra={"model_version": desired.version, "reason": verdict.reason},
        )
        return self._result("refused", state, {"detail": f"{verdict.reason}: {verdict.detail}"})

    def _release(self, claim: Lease) -> None:
        def release(s: State) -> Decision:
            if not s.claim or s.claim.owner != claim.owner:
                return None
            return dataclasses.replace(s, claim=None), []

        try:
            self.state.update(release)
        except Exception:  # the claim expires on its own; the original error is the one to report
            logger.exception("could not release the claim on version %s", claim.key)

    def _flush_outbox(self) -> str | None:
        """Publish an event a previous run committed but could not confirm; its event id, if any."""
        pending = self.state.read().state.outbox
        if pending is None:
            return None
        event = ProductionChanged.from_dict(pending)
        logger.warning("publishing event %s left in the outbox", event.event_id, extra={"event_id": event.event_id})
        self._publish(event)
        return event.event_id

    def _publish(self, event: ProductionChanged) -> None:
        try:
            message_id = self.publisher.publish(event)
        except Exception as exc:  # grpc and timeout errors alike: the outbox keeps the event
            raise PublishError(f"event {event.event_id} not confirmed by Pub/Sub: {exc}") from exc

        def clear(s: State) -> Decision:
            if not s.outbox or s.outbox.get("event_id") != event.event_id:
                return None
            entry = history_entry("published", event.model_version, event_id=event.event_id, message_id=message_id)
            return dataclasses.replace(s, outbox=None), [entry]

        self.state.update(clear)
        logger.info(
            "published event %s for version %s",
            event.event_id,
            event.model_version,
            extra={"model_version": event.model_version, "event_id": event.event_id, "message_id": message_id},
        )

    @staticmethod
    def _result(action: str, state: State, outcome: dict[str, Any]) -> TickResult:
        return TickResult(
            action=action,
            desired_version=state.version("desired"),
            target_version=state.version("target"),
            serving_version=state.version("serving"),
            detail=outcome.get("detail", ""),
            event_id=outcome.get("event_id"),
        )
