"""One retrain tick: export feedback (when due), fingerprint the data, decide, act. The one place effects happen.

The claim is a compare-and-swap on `retraining/{model}` (sentiment_core.deployment_store.StateDocument): of two
ticks at once one commits the claim and starts the job; the other re-reads, finds the execution running, and
waits. Only the tick whose claim committed calls the runner, then records the execution's name (or its failure to
start, with backoff). A crash between the claim and that record leaves a claim without a name, which counts as a
failed start after retrain_decisions.START_GRACE_S.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from feedback_export import ExportResult, ExportUnavailable, FeedbackExporter
from retrain_decisions import (
    Action,
    Decision,
    Observed,
    Policy,
    RetrainState,
    Status,
    decide,
    start_failed,
    started,
)
from runners import JobRunner, RunnerError

from sentiment_core.deployment_store import StateDocument, StateUnavailable, utc_now
from sentiment_core.records import StoreUnavailable
from sentiment_core.registry import RegistryClient
from sentiment_core.training_data import FINGERPRINT_TAG, DataObject, TrainingSettings, fingerprint

logger = logging.getLogger("sentiment.retrain")


@dataclasses.dataclass(frozen=True)
class TickResult:
    action: Action
    detail: str
    fingerprint: str
    execution: str | None = None
    name: str | None = None
    export: dict[str, Any] | None = None

    def to_api(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "action": self.action.value}


def new_execution_id(model: str, now: datetime) -> str:
    """Readable and unique: the model, the time, a random suffix (a valid file and label name)."""
    return f"{model.lower()[:30].strip('-')}-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class Retrainer:
    store: StateDocument[RetrainState]
    registry: RegistryClient
    experiment: str
    runner: JobRunner
    list_data: Callable[[], list[DataObject]]
    training: TrainingSettings
    policy: Policy
    model_name: str
    auto_promote: str = "never"
    exporter: FeedbackExporter | None = None
    clock: Callable[[], datetime] = utc_now

    def tick(self) -> TickResult:
        export = self._export()
        objects = self.list_data()
        fp = fingerprint(objects, self.training)
        last = self.store.read().state.last
        runner = None
        if last is not None and last.status is Status.RUNNING and last.name:
            runner = (last.name, self.runner.status(last.name))
        trained = running = None
        if runner is None:
            trained = self.registry.run_with_tag(self.experiment, FINGERPRINT_TAG, fp)
        if runner is None and trained is None:
            # A run of this data someone else started (the demo, a person): not a second one beside it. One that
            # crashed stays RUNNING in MLflow for ever, so only one younger than the timeout counts.
            since = self.clock() - timedelta(seconds=self.policy.timeout_s)
            running = self.registry.run_with_tag(self.experiment, FINGERPRINT_TAG, fp, "RUNNING", since)
        observed = Observed(fp, len(objects), trained, runner, running)
        execution_id = new_execution_id(self.model_name, self.clock())
        decision = self.store.apply(lambda state, now: decide(state, observed, self.policy, now, execution_id))
        if decision.action is Action.START:
            decision = self._start(execution_id)
        if decision.cancel is not None:
            try:
                self.runner.cancel(decision.cancel)
            except RunnerError as exc:  # recorded as failed already; the next tick cannot cancel it again
                logger.error("execution %s could not be cancelled: %s", decision.cancel, exc)
        level = logging.WARNING if decision.action is Action.FAILED else logging.INFO
        fields = {"action": decision.action.value, "fingerprint": fp}
        logger.log(level, "retrain check: %s: %s", decision.action.value, decision.detail, extra=fields)
        current = decision.state.last
        return TickResult(
            decision.action,
            decision.detail,
            fp,
            current.id if current else None,
            current.name if current else None,
            export.to_api() if export else None,
        )

    def _start(self, execution_id: str) -> Decision:
        env = {"RETRAIN_EXECUTION": execution_id, "AUTO_PROMOTE": self.auto_promote}
        try:
            name = self.runner.start(execution_id, env)
        except RunnerError as exc:
            logger.error("execution %s could not be started: %s", execution_id, exc)
            error = str(exc)
            return self.store.apply(lambda state, now: start_failed(state, execution_id, error, self.policy, now))
        return self.store.apply(lambda state, now: started(state, execution_id, name, now))

    def _export(self) -> ExportResult | None:
        """The export, when configured; its failure is logged and reported, never failing the retrain check."""
        if self.exporter is None:
            return None
        try:
            return self.exporter.export_if_due(self.clock())
        except (ExportUnavailable, StoreUnavailable, StateUnavailable) as exc:
            logger.error("feedback export failed: %s", exc)
            return ExportResult(False, f"failed: {exc}")
