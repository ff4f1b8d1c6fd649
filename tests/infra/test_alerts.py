"""infra/terraform/monitoring.tf and dashboards/serving.json against the code they watch.

Every log-based metric's filter, as terraform renders it, is run (tests/infra/log_query.py) against the JSON lines
the real code writes, captured through sentiment_core.logs.JsonFormatter while the code runs: the reconciler
refusing a version and rolling a rollout back, the redeploy failing and meeting an unprocessable message, the
drift evaluation's change lines, predict's and feedback's request lines. Each metric must count exactly its own
lines, in every service that runs the code, and a misspelt field or value must count none. Alerts and the
dashboard must read metrics that exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import flask
import pytest
from cloudevents.http import CloudEvent

from localdev.services import FUNCTIONS_DIR
from sentiment_core import http, logs, web
from sentiment_core.deployment_store import Snapshot
from sentiment_core.deployments import DeploymentState, Desired, Rollout, Serving, Target
from sentiment_core.events import ProductionChanged
from sentiment_core.monitoring import DriftChange, DriftSettings, MonitorCounts, Reference, Window, assess
from sentiment_core.records import StoreUnavailable
from sentiment_core.registry import ModelVersion
from sentiment_core.rollout import VersionCounts, start
from tests.functions.conftest import redeploy_module, watcher_module
from tests.infra import log_query
from tests.infra.terraform_config import REPO_ROOT, TERRAFORM, functions, locals_, parsed, resources, unquote

MONITORING_TF = TERRAFORM / "monitoring.tf"
DASHBOARD = TERRAFORM / "dashboards" / "serving.json"
SHA = "a" * 64
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)

# What each log-based metric must count, by the kind of line (the keys of `lines` below), and nothing else.
EXPECTED = {
    "sentiment_deploy_refused": {"deploy_refused", "event_refused"},
    "sentiment_rollout_rolled_back": {"rollout_rolled_back"},
    "sentiment_deploy_failed": {"deploy_failed"},
    "sentiment_event_unprocessable": {"event_unprocessable"},
    "sentiment_drift_detected": {"drift_detected"},
    "sentiment_drift_resolved": {"drift_resolved"},
    "sentiment_monitoring_evaluated": {"evaluated_with_feedback", "evaluated_without_feedback"},
    "sentiment_monitoring_failed": {"monitoring_failed"},
    "sentiment_server_errors": {"predict_model_unavailable", "predict_healthz_unavailable", "feedback_internal"},
    "sentiment_predictions": {"predict_answered"},
    "sentiment_feedback_answers": {"feedback_recorded"},
    "sentiment_scheduler_failures": {"scheduler_attempt_failed"},
}

# Google's own metrics the alerts and the dashboard read, with the monitored resource they are written against.
BUILT_IN = {
    "run.googleapis.com/request_count": "cloud_run_revision",
    "run.googleapis.com/request_latencies": "cloud_run_revision",
    "run.googleapis.com/container/instance_count": "cloud_run_revision",
    "pubsub.googleapis.com/subscription/num_undelivered_messages": "pubsub_subscription",
    "monitoring.googleapis.com/uptime_check/check_passed": "uptime_url",
}
USER_METRIC = "logging.googleapis.com/user/"


# --- monitoring.tf's plain locals, as terraform renders them --------------------------------------------------


def plain_locals_block() -> str:
    """monitoring.tf's first locals block, which holds plain values only (its comment says so)."""
    (block,) = [
        b for b in re.findall(r"^locals \{\n.*?^\}\n", MONITORING_TF.read_text(), re.M | re.S) if "log_metrics =" in b
    ]
    return block


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """local.log_metrics, local.log_alerts and local.log_distributions exactly as terraform evaluates them (no
    provider needed)."""
    module = tmp_path_factory.mktemp("monitoring-locals")
    (module / "main.tf").write_text(plain_locals_block())
    result = subprocess.run(
        ["terraform", f"-chdir={module}", "console", "-no-color"],
        input="jsonencode({log_metrics = local.log_metrics, log_alerts = local.log_alerts, "
        "log_distributions = local.log_distributions})\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))


# --- the lines the code writes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """Every record logged inside the block, as the JSON line sentiment_core.logs prints on stdout."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def only(lines: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The one captured line with these fields."""
    (line,) = [line for line in lines if all(line.get(k) == v for k, v in fields.items())]
    return line


class MemoryStore:
    """The deployment document in memory: DeploymentStore's read and apply, without Firestore (unit tier)."""

    def __init__(self, state: DeploymentState) -> None:
        self.state = state

    def read(self) -> Snapshot:
        return Snapshot(self.state, None)

    def apply(self, decide: Callable[[DeploymentState, datetime], Any]) -> Any:
        decision = decide(self.state, datetime.now(UTC))
        self.state = decision.state
        return decision


class Registry:
    """MLflow's production alias on one version; tags and alias writes accepted."""

    def __init__(self, production: str) -> None:
        self.production = production

    def production_version(self, name: str) -> ModelVersion:
        return ModelVersion(name, self.production, f"run-{self.production}", "models:/m-1", "alias")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.production = version

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        pass


class Publisher:
    def publish(self, event: ProductionChanged) -> str:
        return "message-1"


class FailingDeployer:
    """Cloud Run refusing every new revision."""

    def current_split(self) -> None:
        return None

    def deploy(self, event: ProductionChanged) -> Any:
        raise redeploy_module("deployers").DeployError("revision predict-00002 never became ready")


def reconciler(production: str, state: DeploymentState) -> Any:
    reconcile, gate = watcher_module("reconcile"), watcher_module("gate")
    return reconcile.Reconciler(
        registry=Registry(production),
        store=MemoryStore(state),
        stager=None,  # a refused version is never staged
        publisher=Publisher(),
        policy=watcher_module("watcher_decisions").Policy(model_name="yelp-sentiment"),
        min_val_accuracy=0.85,
        counts=lambda version, since: VersionCounts(version),
        save_reference=lambda version, reference: None,  # a refused version has no reference to keep
        evaluator=None,  # a version refused by the gate is never evaluated
        fetch=lambda registry, version: gate.Candidate(version, None, None, None, None),  # model.onnx missing
    )


def watcher_lines() -> dict[str, dict[str, Any]]:
    """A tick that refuses a version whose model file is missing; a tick during a rollout after a person moved the
    alias back to the stable version: it rolls the rollout back."""
    with captured() as refusing:
        assert reconciler("1", DeploymentState()).tick("scheduler").action.value == "refused"
    earlier = datetime.now(UTC) - timedelta(hours=1)
    rolling = DeploymentState(
        desired=Desired("2", "run-2", "alias"),
        target=Target("2", "run-2", SHA, "gs://b/yelp-sentiment/2", "event-2", earlier),
        serving=Serving("1", "run-1", SHA, "gs://b/yelp-sentiment/1", "event-1", earlier, "predict-00001", "https://p"),
        rollout=Rollout.of(start("1", "2", earlier), 10),
    )
    with captured() as rolling_back:
        assert reconciler("1", rolling).tick("scheduler").rollout["action"] == "roll_back"
    return {
        "checking_version": only(refusing, message="checking version 1"),
        "deploy_refused": only(refusing, severity="WARNING"),
        "rollout_rolled_back": only(rolling_back, severity="WARNING"),
        "event_published": only(rolling_back, message_id="message-1"),
    }


def drift_lines() -> dict[str, dict[str, Any]]:
    """drift_watch.log_change on a version whose answers turned around, then came back."""
    drift_watch = watcher_module("drift_watch")
    reference = Reference.of([0.9] * 300, ["very good food"] * 300, None, 0.5)
    turned = Window(300, 0, counts=sum((MonitorCounts.of(0.1, "bad food") for _ in range(300)), MonitorCounts()))
    back = Window(300, 300, counts=reference.counts)
    settings = DriftSettings()
    answered = Window(300, 300, feedback=20, correct=19, counts=reference.counts)
    with captured() as lines:
        for change, window in ((DriftChange.DETECTED, turned), (DriftChange.RESOLVED, back)):
            assessment = assess(window, reference, settings)
            drift_watch.log_change(drift_watch.change_record(change, "3", assessment, settings.window_hours, NOW))
    with captured() as evaluations:
        drift_watch.log_evaluation("3", assess(answered, reference, settings), settings.window_hours)
        drift_watch.log_evaluation("3", assess(back, reference, settings), settings.window_hours)
    with_feedback, without_feedback = evaluations

    class Unreachable:
        """A drift evaluation whose Firestore does not answer."""

        def __init__(self) -> None:
            self.settings = settings

        def check(self, versions: set[str]) -> None:
            raise StoreUnavailable("Firestore did not answer within 10 s")

    with captured() as failing:
        watcher_module("watcher_service").run_drift_check(Unreachable(), MemoryStore(DeploymentState()))
    return {
        "monitoring_failed": only(failing, severity="ERROR"),
        "drift_detected": only(lines, severity="WARNING"),
        "drift_resolved": only(lines, severity="INFO"),
        "evaluated_with_feedback": with_feedback,
        "evaluated_without_feedback": without_feedback,
    }


def redeploy_lines() -> dict[str, dict[str, Any]]:
    """A redeploy whose revision never gets ready; a push whose CloudEvent carries no Pub/Sub message."""
    redeploy, service = redeploy_module("redeploy"), redeploy_module("redeploy_service")
    policy = redeploy_module("redeploy_decisions").Policy(model_name="yelp-sentiment", serving_bucket="b")
    event = ProductionChanged("event-3", "yelp-sentiment", "3", "run-3", "gs://b/yelp-sentiment/v3", SHA, None)
    with captured() as failing, contextlib.suppress(RuntimeError):
        redeploy.Redeployer(MemoryStore(DeploymentState()), FailingDeployer(), policy).handle(event)
    empty = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub"}, {})
    with captured() as unprocessable, contextlib.suppress(ValueError):
        service.handle(empty, redeployer=lambda: None)
    planted = dataclasses.replace(event, model_uri="gs://attacker-public-bucket/evil")
    with captured() as refusing:
        redeploy.Redeployer(MemoryStore(DeploymentState()), FailingDeployer(), policy).handle(planted)
    return {
        "deploy_failed": only(failing, severity="ERROR"),
        "event_unprocessable": only(unprocessable),
        "event_refused": only(refusing, severity="ERROR"),  # its model_uri is not its staged folder
    }


def predict_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """predict itself (functions-framework) with no model to load: 503 on POST / and GET /healthz."""
    import functions_framework

    monkeypatch.setenv("MODEL_URI", str(tmp_path / "not-staged"))
    monkeypatch.setenv("FEEDBACK_TOKEN_SECRET", "test-secret-0123456789abcdef")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-monitoring")
    client = functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py")).test_client()
    with captured() as lines:
        assert client.post("/", json={"text": "great food"}).status_code == 503
        assert client.get("/healthz").status_code == 503
    return {
        "predict_model_unavailable": only(lines, http_method="POST", status=503),
        "predict_healthz_unavailable": only(lines, path="/healthz", status=503),
    }


def served(method: str, path: str, answer: Callable[[], flask.Response], **log_fields: Any) -> dict[str, Any]:
    """The request line web.serve (predict's and feedback's entry points both call it) writes for one answer."""
    app = flask.Flask(__name__)
    with app.test_request_context(path, method=method, json={}), captured() as lines:
        web.serve(flask.request, {path: {method: lambda request: answer()}}, http.Cors.from_setting(""), **log_fields)
    return only(lines, http_method=method)  # not the "unhandled error" line a 500 also writes


def raise_(error: Exception) -> Any:
    raise error


def request_lines() -> dict[str, dict[str, Any]]:
    """Request lines of every kind the counters tell apart: predict's 201 with the model version its entry point
    passes (functions/predict/main.py), a client error, feedback's 200, 409 and an unexpected 500."""
    return {
        "predict_answered": served("POST", "/", lambda: http.json_response({}, 201), model_version="7"),
        "predict_client_error": served(
            "POST", "/", lambda: raise_(http.bad_request("invalid_text", "text is empty")), model_version="7"
        ),
        "predict_healthz": served("GET", "/healthz", lambda: http.json_response({}), model_version="7"),
        "feedback_recorded": served("POST", "/", lambda: http.json_response({})),
        "feedback_conflict": served("POST", "/", lambda: raise_(http.ApiError(409, "feedback_conflict", "no"))),
        "feedback_internal": served("POST", "/", lambda: raise_(RuntimeError("a bug"))),
        "feedback_statistics": served("GET", "/statistics", lambda: http.json_response({})),
    }


REQUEST_SERVICE = {"predict_": "predict", "feedback_": "feedback"}


def scheduler_entries() -> dict[str, dict[str, Any]]:
    """Cloud Scheduler's own log entries of one attempt of the tick (its AttemptFinished shape), failed and not:
    no code of the repository writes them; the job's id is scheduler.tf's."""
    job = unquote(resources("google_cloud_scheduler_job")["tick"]["name"])

    def attempt(severity: str, status: int) -> dict[str, Any]:
        return {
            "resource": {"type": "cloud_scheduler_job", "labels": {"job_id": job, "location": "europe-west1"}},
            "severity": severity,
            "httpRequest": {"status": status},
            "jsonPayload": {
                "@type": "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished",
                "jobName": f"projects/p/locations/europe-west1/jobs/{job}",
                "targetType": "HTTP",
                **({"status": "UNAVAILABLE"} if severity == "ERROR" else {}),
            },
        }

    return {"scheduler_attempt_failed": attempt("ERROR", 503), "scheduler_attempt_succeeded": attempt("INFO", 200)}


def services_running(source: str) -> list[str]:
    """The deployed functions (Cloud Run services) whose code is functions/<source>."""
    return sorted(name for name, spec in functions().items() if spec["source"] == source)


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, Any]]]:
    """(kind, log entry) of every line above, once per Cloud Run service that runs the code that writes it."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for kind, line in {**watcher_lines(), **drift_lines()}.items():
        entries += [(kind, log_query.cloud_run_entry(line, s)) for s in services_running("registry_watcher")]
    for kind, line in redeploy_lines().items():
        entries += [(kind, log_query.cloud_run_entry(line, s)) for s in services_running("redeploy")]
    with pytest.MonkeyPatch.context() as monkeypatch:
        requests = {**predict_lines(monkeypatch, tmp_path_factory.mktemp("predict")), **request_lines()}
    for kind, line in requests.items():
        service = next(s for prefix, s in REQUEST_SERVICE.items() if kind.startswith(prefix))
        entries.append((kind, log_query.cloud_run_entry(line, service)))
    entries += list(scheduler_entries().items())
    return entries


def counted(query: str, lines: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {kind for kind, entry in lines if log_query.matches(query, entry)}


# --- the log-based metrics -------------------------------------------------------------------------------------


def test_every_log_metric_has_its_expected_lines_and_every_event_a_metric(rendered) -> None:
    events = {v for k, v in vars(logs).items() if k.isupper() and k != "EVENT_FIELD" and isinstance(v, str)}

    assert set(rendered["log_metrics"]) == set(EXPECTED)
    assert {f"sentiment_{event}" for event in events} <= set(EXPECTED)


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_log_metric_counts_exactly_its_lines_from_every_service_that_writes_them(rendered, lines, metric) -> None:
    query = rendered["log_metrics"][metric]["filter"]
    expected = [entry for kind, entry in lines if kind in EXPECTED[metric]]

    assert counted(query, lines) == EXPECTED[metric]
    assert expected
    assert all(log_query.matches(query, entry) for entry in expected)


DISTRIBUTIONS = {
    "sentiment_estimated_accuracy": {"evaluated_with_feedback", "evaluated_without_feedback"},
    "sentiment_feedback_accuracy": {"evaluated_with_feedback"},  # no answers yet: nothing to count
}


@pytest.mark.parametrize("metric", sorted(DISTRIBUTIONS))
def test_distribution_counts_exactly_the_lines_that_carry_its_number(rendered, lines, metric) -> None:
    spec = rendered["log_distributions"][metric]
    counted_entries = [entry for _, entry in lines if log_query.matches(spec["filter"], entry)]

    assert set(rendered["log_distributions"]) == set(DISTRIBUTIONS)
    assert counted(spec["filter"], lines) == DISTRIBUTIONS[metric]
    values = [log_query.lookup(entry, f"jsonPayload.{spec['field']}")[1] for entry in counted_entries]
    assert values
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert all(entry["jsonPayload"]["model_version"] == "3" for entry in counted_entries)


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_log_metric_labels_are_fields_of_every_line_it_counts(rendered, lines, metric) -> None:
    spec = rendered["log_metrics"][metric]
    counted_entries = [entry for _, entry in lines if log_query.matches(spec["filter"], entry)]

    for label in spec["labels"]:
        assert all(log_query.lookup(entry, f"jsonPayload.{label}")[0] for entry in counted_entries), label


def test_every_kind_of_line_is_a_real_one_the_code_wrote(lines) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind, entry in lines:
        by_kind.setdefault(kind, []).append(entry)

    assert by_kind["deploy_refused"][0]["jsonPayload"]["reason"] == "model_missing"
    assert by_kind["rollout_rolled_back"][0]["jsonPayload"]["rollout_action"] == "roll_back"
    assert by_kind["drift_detected"][0]["jsonPayload"]["reasons"]
    assert by_kind["predict_model_unavailable"][0]["jsonPayload"]["model_version"] is None  # before a model loads
    assert [e["resource"]["labels"]["service_name"] for e in by_kind["deploy_refused"]] == [
        "registry-watcher",
        "registry-webhook",
    ]


def drift_filter(rendered) -> str:
    return rendered["log_metrics"]["sentiment_drift_detected"]["filter"]


# Each: a correct filter with one thing wrong, which then counts none of the lines it should.
MISSPELT = [
    ('jsonPayload.event="drift_detected"', 'jsonPayload.evnt="drift_detected"'),
    ('jsonPayload.event="drift_detected"', 'jsonPayload.event="drift_detect"'),
    ('"registry-watcher" OR "registry-webhook"', '"registry_watcher" OR "registry_webhook"'),
    ('resource.type="cloud_run_revision"', 'resource.type="cloud_function"'),
    ('jsonPayload.event="drift_detected"', 'jsonPayload.event="drift_detected" AND severity>=ERROR'),
    ('jsonPayload.event="drift_detected"', 'jsonPayload.model_version=3 AND jsonPayload.event="drift_detected"'),
]


@pytest.mark.parametrize(("right", "wrong"), MISSPELT, ids=[w for _, w in MISSPELT])
def test_evaluator_counts_nothing_with_a_misspelt_field_or_value(rendered, lines, right: str, wrong: str) -> None:
    query = drift_filter(rendered)

    assert right in query
    assert counted(query, lines) == {"drift_detected"}
    assert counted(query.replace(right, wrong), lines) == set()


@pytest.mark.parametrize(
    ("right", "wrong"),
    [("jsonPayload.status=201", 'jsonPayload.status="201"'), ("jsonPayload.status=201", "jsonPayload.status=200")],
)
def test_evaluator_counts_no_prediction_with_the_wrong_status_or_its_type(rendered, lines, right, wrong) -> None:
    query = rendered["log_metrics"]["sentiment_predictions"]["filter"]

    assert right in query
    assert counted(query.replace(right, wrong), lines) == set()


@pytest.mark.parametrize(
    "query",
    [
        'jsonPayload.event="a" OR jsonPayload.event="b"',
        'NOT jsonPayload.event="a"',
        'jsonPayload.event:"drift"',
        'jsonPayload.event=~"drift.*"',
        'jsonPayload.event!="a"',
        "jsonPayload.event=drift_detected",
        'jsonPayload.status>=("500" OR "503")',
        'jsonPayload.event="a" jsonPayload.path="/"',
    ],
)
def test_evaluator_refuses_syntax_it_does_not_know(query: str) -> None:
    with pytest.raises(log_query.UnsupportedQuery):
        log_query.parse(query)


NOT_WATCHED_YET = {"retrain"}


def test_log_metric_filters_name_deployed_services_and_the_scheduler_job(rendered) -> None:
    text = " ".join(spec["filter"] for spec in rendered["log_metrics"].values())
    values = re.findall(r'service_name=(\([^)]*\)|"[^"]*")', text)  # ="a" or =("a" OR "b")
    named = {name for value in values for name in re.findall(r'"([^"]+)"', value)}

    # Every function is watched, and only deployed ones are named; the retrain check's metrics need the lines its
    # code writes (EXPECTED), which arrive with functions/retrain.
    assert named == set(functions()) - NOT_WATCHED_YET
    assert f'job_id="{unquote(resources("google_cloud_scheduler_job")["tick"]["name"])}"' in text


# --- alerts ----------------------------------------------------------------------------------------------------


METRIC_OF_EACH = "${google_logging_metric.main[each.value.metric].name}"


def alert_filters(rendered) -> list[tuple[str, str]]:
    """(policy, filter) of every condition of every alert policy, with log alerts' metric names resolved."""
    found = []
    for name, body in resources("google_monitoring_alert_policy").items():
        for condition in body["conditions"]:
            threshold = condition["condition_threshold"][0]
            for key in ("filter", "denominator_filter"):
                if key not in threshold:
                    continue
                query = unquote(threshold[key]).replace('\\"', '"')
                if "each.value" in query:
                    for alert, spec in rendered["log_alerts"].items():
                        resolved = query.replace(METRIC_OF_EACH, spec["metric"])
                        found.append((f"{name}[{alert}]", resolved.replace("${each.value.resource}", spec["resource"])))
                else:
                    found.append((name, query))
    return found


def metric_problems(query: str, log_metrics: dict[str, Any]) -> list[str]:
    """What is wrong with the metric a Monitoring filter reads: not defined, or on another resource type."""
    (metric,) = re.findall(r'metric\.type="([^"]+)"', query)
    (resource,) = re.findall(r'resource\.type="([^"]+)"', query)
    if metric.startswith(USER_METRIC):
        name = metric.removeprefix(USER_METRIC)
        if name not in log_metrics:
            return [f"{metric} is not a log-based metric of monitoring.tf"]
        if f'resource.type="{resource}"' not in log_metrics[name]["filter"]:
            return [f"{name} counts no {resource} lines"]
        return []
    if metric not in BUILT_IN:
        return [f"{metric} is not a metric the checks know"]
    return [] if BUILT_IN[metric] == resource else [f"{metric} is written against {BUILT_IN[metric]}"]


def test_every_alert_condition_reads_a_metric_that_exists_on_its_resource(rendered) -> None:
    filters = alert_filters(rendered)

    assert {policy.split("[")[0] for policy, _ in filters} == set(resources("google_monitoring_alert_policy"))
    assert [(policy, problem) for policy, q in filters for problem in metric_problems(q, rendered["log_metrics"])] == []


def test_metric_check_catches_an_undefined_metric_and_a_wrong_resource(rendered) -> None:
    metrics = rendered["log_metrics"]

    assert metric_problems(f'metric.type="{USER_METRIC}sentiment_drift" AND resource.type="x"', metrics)
    assert metric_problems(f'metric.type="{USER_METRIC}sentiment_drift_detected" AND resource.type="global"', metrics)
    assert metric_problems('metric.type="run.googleapis.com/request_count" AND resource.type="uptime_url"', metrics)


def test_every_alert_notifies_the_channel_and_names_the_runbook() -> None:
    policies = resources("google_monitoring_alert_policy")
    channels = {name: body["notification_channels"] for name, body in policies.items()}
    runbooks = {name: body["documentation"][0]["content"] for name, body in policies.items()}

    assert [name for name, value in channels.items() if value != "${local.notification_channels}"] == []
    assert [name for name, content in runbooks.items() if "local.alert_runbook" not in content] == []
    assert "docs/alerts.md" in locals_()["alert_runbook"]
    assert unquote(resources("google_monitoring_notification_channel")["email"]["count"]).startswith(
        '${var.alert_email == "" ? 0'
    )


def test_uptime_check_calls_mlflow_health_with_an_identity_token_mlflow_admits() -> None:
    check = resources("google_monitoring_uptime_check_config")["mlflow"]
    http_check = check["http_check"][0]
    grant = resources("google_cloud_run_v2_service_iam_member")["mlflow_uptime_check"]

    assert unquote(http_check["path"]) == "/health"
    assert http_check["use_ssl"] is True
    assert unquote(http_check["service_agent_authentication"][0]["type"]) == "OIDC_TOKEN"
    assert "google_cloud_run_v2_service.mlflow.uri" in check["monitored_resource"][0]["labels"]["host"]
    assert grant["name"] == "${google_cloud_run_v2_service.mlflow.name}"
    assert unquote(grant["role"]) == "roles/run.invoker"


# --- the dashboard ---------------------------------------------------------------------------------------------


def rendered_dashboard() -> dict[str, Any]:
    """serving.json as templatefile renders it, with stand-ins for the values monitoring.tf passes."""
    call = resources("google_monitoring_dashboard")["serving"]["dashboard_json"]
    passed = set(re.findall(r"(\w+) = ", call))
    template = DASHBOARD.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", template))
    assert used == passed, "serving.json's ${...} and the templatefile values differ"
    return json.loads(re.sub(r"\$\{(\w+)\}", lambda m: f"stand-in-{m[1]}", template))


def widgets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [tile["widget"] for tile in dashboard["mosaicLayout"]["tiles"]]


def test_dashboard_tiles_fit_the_grid_without_overlapping() -> None:
    layout = rendered_dashboard()["mosaicLayout"]
    cells = [
        (x, y)
        for tile in layout["tiles"]
        for x in range(tile.get("xPos", 0), tile.get("xPos", 0) + tile["width"])
        for y in range(tile.get("yPos", 0), tile.get("yPos", 0) + tile["height"])
    ]

    assert all(x < layout["columns"] for x, _ in cells)
    assert len(cells) == len(set(cells))


def test_dashboard_charts_read_metrics_that_exist(rendered) -> None:
    queries = [
        data_set["timeSeriesQuery"]["timeSeriesFilter"]["filter"]
        for widget in widgets(rendered_dashboard())
        for data_set in widget.get("xyChart", {}).get("dataSets", [])
    ]
    read = {re.search(r'metric\.type="([^"]+)"', q)[1].removeprefix(USER_METRIC) for q in queries}

    defined = {**rendered["log_metrics"], **rendered["log_distributions"]}
    assert [(q, problem) for q in queries for problem in metric_problems(q, defined)] == []
    assert set(defined) <= read  # every counter and distribution is charted
    assert set(BUILT_IN) <= read


def test_dashboard_log_panels_show_the_event_lines_they_are_about(lines) -> None:
    panels = {w["title"]: w["logsPanel"]["filter"] for w in widgets(rendered_dashboard()) if "logsPanel" in w}

    assert {title.split(":")[0]: counted(query, lines) for title, query in panels.items()} == {
        "Drift state": {"drift_detected", "drift_resolved"},
        "Deployment events": {
            "deploy_refused",
            "event_refused",
            "rollout_rolled_back",
            "deploy_failed",
            "event_unprocessable",
        },
    }


# --- the documentation -----------------------------------------------------------------------------------------


def test_alerts_doc_names_every_metric_alert_variable_and_tile(rendered) -> None:
    doc = (REPO_ROOT / "docs" / "alerts.md").read_text()
    titles = [w["title"].split(",")[0].split(":")[0] for w in widgets(rendered_dashboard())]
    alerts = [*resources("google_monitoring_alert_policy"), *rendered["log_alerts"]]

    assert [m for m in EXPECTED if f"`{m}`" not in doc] == []
    assert [a for a in alerts if f"`{a}`" not in doc] == []
    assert [v for v in ("alert_email", "alert_error_ratio", "alert_latency_p95_ms") if f"`{v}`" not in doc] == []
    assert [t for t in titles if t not in doc] == []


# --- the alert variables, planned by terraform ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "rejected_by"),
    [
        ({}, None),
        ({"alert_email": "ml-ops@example.com", "alert_error_ratio": 0.5, "alert_latency_p95_ms": 50}, None),
        ({"alert_email": "ml-ops"}, "alert_email"),
        ({"alert_email": "a@example.com, b@example.com"}, "alert_email"),
        ({"alert_error_ratio": 1}, "alert_error_ratio"),
        ({"alert_latency_p95_ms": 0}, "alert_latency_p95_ms"),
    ],
    ids=str,
)
def test_alert_variables_fail_the_plan_naming_the_variable(tmp_path: Path, variables, rejected_by) -> None:
    declared = re.findall(r'^variable "alert_\w+" \{\n.*?^\}\n', (TERRAFORM / "variables.tf").read_text(), re.M | re.S)
    (tmp_path / "main.tf").write_text("\n".join(declared))
    (tmp_path / "terraform.tfvars.json").write_text(json.dumps(variables))

    plan = subprocess.run(
        ["terraform", f"-chdir={tmp_path}", "plan", "-input=false", "-no-color"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert len(declared) == 3
    assert (plan.returncode == 0) == (rejected_by is None), plan.stdout + plan.stderr
    if rejected_by is not None:
        assert f"{rejected_by} must" in plan.stderr


def test_tfvars_example_sets_alert_email_and_shows_the_thresholds_with_their_defaults() -> None:
    import hcl2

    example = (TERRAFORM / "terraform.tfvars.example").read_text()
    commented = [line.removeprefix("# ") for line in example.splitlines() if line.startswith("# alert_")]
    shown = {name: value for name, value in hcl2.loads("\n".join(commented)).items() if name.startswith("alert_")}
    variables = {unquote(k): v for block in parsed()["variable"] for k, v in block.items()}

    assert shown == {name: variables[name]["default"] for name in ("alert_error_ratio", "alert_latency_p95_ms")}
    assert "alert_email" in hcl2.loads(example)


# --- predict's and feedback's real answers (system: the Firestore emulator) -------------------------------------


@pytest.fixture
def staged_model(tmp_path: Path) -> Path:
    """A tiny exported model (two words), staged as version 7 the way the watcher stages one."""
    import torch

    from sentiment_core.manifest import write_staged_folder
    from training import export, preprocess
    from training.model import FastTextClassifier

    vocabulary = preprocess.Vocabulary.build(preprocess.tokenize(["good food", "bad food"]), min_count=1, max_size=10)
    torch.manual_seed(0)
    model = FastTextClassifier(len(vocabulary), 4).eval()
    model_bytes = export.build_onnx(model, vocabulary, export.ModelMetadata("run-1", "stars>=3", 0.5, "0" * 64))
    folder = tmp_path / "v7"
    write_staged_folder(
        folder,
        model_bytes.SerializeToString(),
        model_name="yelp-sentiment",
        model_version="7",
        mlflow_run_id="run-1",
        threshold=0.5,
    )
    return folder


def test_real_prediction_and_feedback_lines_are_counted_with_the_version(
    rendered, firestore_emulator, staged_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functions_framework

    for name, value in {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": "demo-monitoring-lines",
        "FEEDBACK_TOKEN_SECRET": "test-secret-0123456789abcdef",
        "MODEL_URI": str(staged_model),
        "FIRESTORE_TIMEOUT_S": "15",  # an emulator on a busy machine: this test is about lines, not latency
    }.items():
        monkeypatch.setenv(name, value)
    predict = functions_framework.create_app("predict", str(FUNCTIONS_DIR / "predict" / "main.py")).test_client()
    predict_main = sys.modules["main"]  # feedback's main.py takes this name next
    feedback = functions_framework.create_app("feedback", str(FUNCTIONS_DIR / "feedback" / "main.py")).test_client()
    metrics = rendered["log_metrics"]

    try:
        with captured() as lines:
            assert predict.get("/healthz").status_code == 200  # the model loads: later lines carry its version
            answer = predict.post("/", json={"text": "good food"})
            assert answer.status_code == 201, answer.json
            answered = {"prediction_id": answer.json["id"], "feedback_token": answer.json["feedback_token"]}
            recorded = feedback.post("/", json={**answered, "is_positive_user_answered": True})
    finally:
        predict_main._store().close()  # its keep-alive connection to the emulator
    prediction = log_query.cloud_run_entry(only(lines, http_method="POST", status=201), "predict")
    feedback_line = log_query.cloud_run_entry(only(lines, http_method="POST", status=200), "feedback")

    assert recorded.status_code == 200, recorded.json
    assert log_query.matches(metrics["sentiment_predictions"]["filter"], prediction)
    assert prediction["jsonPayload"]["model_version"] == "7"
    assert log_query.matches(metrics["sentiment_feedback_answers"]["filter"], feedback_line)
    assert not log_query.matches(metrics["sentiment_predictions"]["filter"], feedback_line)
