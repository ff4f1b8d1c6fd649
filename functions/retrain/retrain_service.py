"""The retrain check's settings and request handling; main.py wires these to functions-framework."""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import flask
from feedback_export import ExportSettings
from retrain import Retrainer
from retrain_decisions import Policy
from runners import RunnerError

from sentiment_core import config, http
from sentiment_core.deployment_store import StateDocument, StateSettings, StateUnavailable, utc_now
from sentiment_core.registry import RegistryError, RegistrySettings
from sentiment_core.training_data import DataLocation, DataLocationError, TrainingSettings

logger = logging.getLogger("sentiment.retrain")

RETRAINING = "retraining"  # the state documents' collection, in DEPLOYMENTS_DATABASE
RUNNERS = ("cloud_run", "local")
AUTO_PROMOTE = ("never", "canary")
TRAINING_JOB = re.compile(r"projects/[^/]+/locations/[^/]+/jobs/[^/]+")
DEFAULT_COMMAND = "python -m training.job"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every variable Terraform (or the local stack) sets on the retrain check; all parsed at start-up."""

    state: StateSettings
    data: DataLocation
    registry: RegistrySettings
    experiment: str
    training: TrainingSettings
    policy: Policy
    export: ExportSettings
    auto_promote: str
    runner: str
    training_job: str | None = None
    cloud_run_endpoint: str | None = None  # a local stand-in of the Admin API (tests)
    local_dir: Path | None = None
    local_cwd: Path | None = None
    local_command: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        runner = config.choice("RETRAIN_RUNNER", "cloud_run", RUNNERS, env)
        local = runner == "local"
        job = config.required("TRAINING_JOB", env) if runner == "cloud_run" else None
        if job is not None and not TRAINING_JOB.fullmatch(job):
            raise config.ConfigError(f"TRAINING_JOB must be projects/P/locations/R/jobs/NAME, got {job!r}")
        try:
            data = DataLocation.parse(config.required("DATA_URI", env))
        except DataLocationError as exc:
            raise config.ConfigError(f"DATA_URI: {exc}") from exc
        return cls(
            state=StateSettings.from_env(env),
            data=data,
            registry=RegistrySettings.from_env(env),
            experiment=config.optional("MLFLOW_EXPERIMENT", "yelp-sentiment", env) or "yelp-sentiment",
            training=TrainingSettings.from_env(env),
            policy=Policy(
                min_interval_s=config.number("RETRAIN_MIN_INTERVAL_S", 3600, 0, 30 * 86400, env),
                backoff_s=config.number("RETRAIN_BACKOFF_S", 600, 1, 86400, env),
                timeout_s=config.number("RETRAIN_TIMEOUT_S", 7200, 60, 7 * 86400, env),
            ),
            export=ExportSettings(
                min_feedback=int(config.number("RETRAIN_MIN_FEEDBACK", 100, 1, 1_000_000, env)),
                interval_s=config.number("FEEDBACK_EXPORT_INTERVAL_S", 86400, 0, 30 * 86400, env),
            ),
            auto_promote=config.choice("AUTO_PROMOTE", "never", AUTO_PROMOTE, env),
            runner=runner,
            training_job=job,
            cloud_run_endpoint=config.optional("CLOUD_RUN_ENDPOINT", "", env) or None,
            local_dir=Path(config.required("LOCAL_TRAINING_DIR", env)) if local else None,
            local_cwd=Path(config.required("LOCAL_TRAINING_CWD", env)) if local else None,
            local_command=_command(config.optional("LOCAL_TRAINING_COMMAND", DEFAULT_COMMAND, env)) if local else (),
        )

    def make_runner(self) -> Any:
        """The runner RETRAIN_RUNNER names: the Cloud Run job, or a child process of the same entry point."""
        from runners import CloudRunJobRunner, LocalRunner

        if self.runner == "local":
            return LocalRunner(self.local_dir, self.local_cwd, self.local_command)
        clients = {}
        if self.cloud_run_endpoint:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import run_v2

            # A local stand-in of the Admin API (tests): no Google credentials, plain HTTP on loopback.
            options = {"credentials": AnonymousCredentials(), "transport": "rest"}
            options["client_options"] = {"api_endpoint": self.cloud_run_endpoint}
            clients = {
                "jobs_client": run_v2.JobsClient(**options),
                "executions_client": run_v2.ExecutionsClient(**options),
            }
        return CloudRunJobRunner(self.training_job, **clients)


def _command(value: str) -> tuple[str, ...]:
    """LOCAL_TRAINING_COMMAND as words; a leading `python` is this interpreter (the repository's virtualenv)."""
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise config.ConfigError(f"LOCAL_TRAINING_COMMAND must be shell words, got {value!r}: {exc}") from exc
    if not words:
        raise config.ConfigError("LOCAL_TRAINING_COMMAND must not be empty")
    return (sys.executable, *words[1:]) if words[0] == "python" else tuple(words)


def state_document(client: Any, model_name: str, clock: Callable[[], datetime] = utc_now) -> StateDocument:
    """`retraining/{model}`: the check's state, its claims and its history."""
    from retrain_decisions import RetrainState

    return StateDocument(client, RETRAINING, model_name, RetrainState, clock=clock)


def handle_tick(request: flask.Request, retrainer: Callable[[], Retrainer]) -> flask.Response:
    """POST /: Cloud Scheduler, `make retrain` or a person. One check; its answer says what it did and why.

    A dependency's failure is a 503 with its code; nothing was started (a job that was started is recorded).
    """
    import requests
    from google.api_core import exceptions as gexc

    failures = (
        (RegistryError, "registry_unavailable"),
        (StateUnavailable, "state_unavailable"),
        (RunnerError, "runner_unavailable"),
        (gexc.GoogleAPIError, "data_unavailable"),  # the data bucket's listing: an answer that is an error
        (requests.RequestException, "data_unavailable"),  # or no answer at all (the storage client's transport)
    )
    try:
        result = retrainer().tick()
    except tuple(kind for kind, _ in failures) as exc:
        code = next(code for kind, code in failures if isinstance(exc, kind))
        raise http.unavailable(code, exc, logger) from exc
    return http.json_response(result.to_api())


def handle_status(store: StateDocument, limit: int = 20) -> flask.Response:
    """GET /status: the state document and its newest history entries."""
    try:
        snapshot = store.read()
        history = store.history(limit)
    except StateUnavailable as exc:
        raise http.unavailable("state_unavailable", exc, logger) from exc
    return http.json_response({"state": http.jsonable(snapshot.state.to_document()), "history": http.jsonable(history)})
