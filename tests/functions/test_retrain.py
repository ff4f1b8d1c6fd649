"""The retrain check's effects on real servers: its state in the Firestore emulator, the data bucket in the GCS
emulator, a real MLflow server; the feedback export; concurrent ticks; failures and backoff."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from sentiment_core.registry import RegistryClient
from sentiment_core.training_data import (
    FINGERPRINT_TAG,
    DataLocation,
    TrainingSettings,
    fingerprint,
    list_training_data,
)
from tests.functions.conftest import retrain_module
from tests.support import PROJECT, monitored_prediction

pytestmark = pytest.mark.system
decisions = retrain_module("retrain_decisions")
export = retrain_module("feedback_export")
retrain = retrain_module("retrain")
service = retrain_module("retrain_service")
runners = retrain_module("runners")
Action, Status = decisions.Action, decisions.Status

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
REVIEW = '{"stars": 5, "text": "lovely soup"}\n'


@pytest.fixture
def bucket(gcs_emulator) -> Iterator[storage.Bucket]:
    """A data bucket of its own, with one training file under the prefix."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
        client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        created = client.create_bucket(f"data-{uuid.uuid4().hex[:12]}")
        created.blob("yelp-sentiment/yelp/reviews.jsonl").upload_from_string(REVIEW)
        yield created


@pytest.fixture
def location(bucket) -> DataLocation:
    return DataLocation(bucket.name, "yelp-sentiment/")


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clean_db, clock):
    """The state document of a model of its own, on the test's clock."""
    return service.state_document(clean_db, f"model-{uuid.uuid4().hex[:8]}", clock)


class CountingRunner:
    """A JobRunner that records its starts (thread-safe) and reports what a test sets."""

    def __init__(self, refuse: bool = False) -> None:
        self.started: list[tuple[str, dict[str, str]]] = []
        self.statuses: dict[str, Status] = {}
        self.refuse = refuse
        self._lock = threading.Lock()

    def start(self, execution_id: str, env) -> str:
        if self.refuse:
            raise runners.RunnerError("the job's image cannot be pulled")
        with self._lock:
            self.started.append((execution_id, dict(env)))
            name = f"train-{len(self.started):05d}"
        self.statuses[name] = Status.RUNNING
        return name

    def status(self, name: str) -> Status:
        return self.statuses[name]


def retrainer(store, location, mlflow_server, runner, clock, experiment=None, exporter=None):
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return retrain.Retrainer(
        store=store,
        registry=RegistryClient(mlflow_server.url, timeout=10),
        experiment=experiment or f"exp-{uuid.uuid4().hex[:8]}",
        runner=runner,
        list_data=lambda: list_training_data(client, location),
        training=TrainingSettings(("--epochs", "1")),
        policy=decisions.Policy(min_interval_s=3600, backoff_s=600, timeout_s=7200),
        model_name="yelp-sentiment",
        auto_promote="canary",
        exporter=exporter,
        clock=clock,
    )


def test_two_concurrent_ticks_start_exactly_one_job(store, location, mlflow_server, bucket, clock) -> None:
    runner = CountingRunner()
    results: list = []
    start = threading.Barrier(4)

    def tick() -> None:
        check = retrainer(store, location, mlflow_server, runner, clock)
        start.wait()
        results.append(check.tick())

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(runner.started) == 1
    assert sorted(r.action for r in results).count(Action.STARTED) == 1
    assert {r.action for r in results} <= {Action.STARTED, Action.RUNNING}
    (execution_id, env) = runner.started[0]
    assert env == {"RETRAIN_EXECUTION": execution_id, "AUTO_PROMOTE": "canary"}
    last = store.read().state.last
    assert (last.id, last.name, last.status) == (execution_id, "train-00001", Status.RUNNING)
    (entry,) = store.history()
    assert (entry["kind"], entry["execution"], entry["name"]) == ("started", execution_id, "train-00001")
    assert "no finished run has fingerprint" in entry["reason"]


def test_finished_run_with_the_fingerprint_is_up_to_date_and_starts_nothing(
    store, location, mlflow_server, bucket, clock
) -> None:
    from mlflow import MlflowClient

    runner = CountingRunner()
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    check = retrainer(store, location, mlflow_server, runner, clock, experiment)
    fp = check.tick().fingerprint
    runner.statuses["train-00001"] = Status.SUCCEEDED
    client = MlflowClient(mlflow_server.url)
    run = client.create_run(client.create_experiment(experiment), tags={FINGERPRINT_TAG: fp})
    client.set_terminated(run.info.run_id)

    recorded = check.tick()
    again = check.tick()

    assert (recorded.action, again.action) == (Action.SUCCEEDED, Action.UP_TO_DATE)
    assert run.info.run_id in again.detail
    assert len(runner.started) == 1


def test_a_recent_running_run_of_the_fingerprint_started_elsewhere_is_waited_for_not_doubled(
    store, location, mlflow_server, bucket, clock
) -> None:
    from mlflow import MlflowClient

    clock.now = datetime.now(UTC)  # the run's start time is the server's real clock
    runner = CountingRunner()
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    check = retrainer(store, location, mlflow_server, runner, clock, experiment)
    client = MlflowClient(mlflow_server.url)
    fp = fingerprint(
        list_training_data(storage.Client(project=PROJECT, credentials=AnonymousCredentials()), location),
        TrainingSettings(("--epochs", "1")),
    )
    demo = client.create_run(client.create_experiment(experiment), tags={FINGERPRINT_TAG: fp})

    waiting = check.tick()
    client.set_terminated(demo.info.run_id)
    after = check.tick()

    assert (waiting.action, after.action) == (Action.RUNNING, Action.UP_TO_DATE)
    assert demo.info.run_id in waiting.detail
    assert runner.started == []


def test_new_data_after_a_run_is_debounced_then_starts_one_more(store, location, mlflow_server, bucket, clock) -> None:
    runner, clock = CountingRunner(), clock
    check = retrainer(store, location, mlflow_server, runner, clock)
    first = check.tick()
    runner.statuses["train-00001"] = Status.SUCCEEDED
    check.tick()
    bucket.blob("yelp-sentiment/yelp/more.jsonl").upload_from_string(REVIEW)

    debounced = check.tick()
    clock.now += timedelta(seconds=3600)
    started = check.tick()

    assert debounced.action is Action.DEBOUNCED
    assert started.action is Action.STARTED
    assert started.fingerprint != first.fingerprint
    assert len(runner.started) == 2


def test_failed_job_is_recorded_and_retried_after_backoff_not_in_a_loop(
    store, location, mlflow_server, bucket, clock
) -> None:
    runner, clock = CountingRunner(), clock
    check = retrainer(store, location, mlflow_server, runner, clock)
    check.tick()
    runner.statuses["train-00001"] = Status.FAILED
    clock.now += timedelta(seconds=60)  # history entries are ordered by their time: the failure comes later

    failed = check.tick()
    clock.now += timedelta(seconds=3539)
    waiting = check.tick()
    clock.now += timedelta(seconds=1)
    retried = check.tick()

    assert failed.action is Action.FAILED
    assert waiting.action is Action.DEBOUNCED  # the retry is due (600 s) but the last start is under an hour old
    assert retried.action is Action.STARTED
    assert len(runner.started) == 2
    kinds = [entry["kind"] for entry in reversed(store.history())]
    assert kinds == ["started", "failed", "started"]


def test_job_that_fails_to_start_is_a_failure_with_backoff(store, location, mlflow_server, bucket, clock) -> None:
    check = retrainer(store, location, mlflow_server, CountingRunner(refuse=True), clock)

    refused = check.tick()
    clock.now += timedelta(seconds=60)
    backing_off = check.tick()
    clock.now += timedelta(hours=1)
    refused_again = check.tick()

    assert refused.action is Action.FAILED
    assert "cannot be pulled" in refused.detail
    assert backing_off.action is Action.BACKING_OFF
    assert refused_again.action is Action.FAILED  # due again: one more try, refused again
    assert store.read().state.failures == 2
    assert store.read().state.next_attempt_at == clock.now + timedelta(seconds=1200)


# The feedback export.


def answered(text: str, positive: bool, at: datetime, counted: bool = True) -> dict:
    """A prediction's document as the feedback store leaves it after the user's answer."""
    prediction = monitored_prediction("1", 0.9, at - timedelta(minutes=5), text=text, user_answer=positive)
    document = prediction.to_document() | {"feedback_at": at, "counted_as_evidence": counted}
    return {"id": prediction.id, **document}


def save(db, *documents: dict) -> None:
    for document in documents:
        fields = {k: v for k, v in document.items() if k != "id"}
        db.collection("predictions").document(document["id"]).set(fields)


@pytest.fixture
def exporter(clean_db, bucket, location, store):
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    settings = export.ExportSettings(min_feedback=3, interval_s=3600)
    return export.FeedbackExporter(clean_db, client, location, store, settings)


def exported_files(bucket) -> dict[str, list[dict]]:
    files = bucket.client.list_blobs(bucket.name, prefix="yelp-sentiment/feedback/")
    return {b.name: [json.loads(line) for line in b.download_as_bytes().decode().splitlines()] for b in files}


def test_export_writes_one_file_of_deduplicated_counted_answers_and_a_second_tick_nothing(
    exporter, clean_db, bucket, store
) -> None:
    t = NOW - timedelta(hours=2)
    soup_first = answered("the soup", False, t)
    soup_last = answered("the soup", True, t + timedelta(minutes=1))  # the latest answer of a text wins
    rows = [answered(f"review {i}", i % 2 == 0, t + timedelta(minutes=2 + i)) for i in range(3)]
    uncounted = answered("over the client's cap", True, t + timedelta(minutes=9), counted=False)
    unanswered = monitored_prediction("1", 0.2, t, text="never answered")
    save(clean_db, soup_first, soup_last, *rows, uncounted, {"id": unanswered.id, **unanswered.to_document()})

    first = exporter.export_if_due(NOW)
    second = exporter.export_if_due(NOW + timedelta(hours=2))

    assert (first.exported, first.rows, second.exported) == (True, 4, False)
    ((name, lines),) = exported_files(bucket).items()
    assert name == "yelp-sentiment/feedback/feedback-start.jsonl"
    assert first.uri == f"gs://{bucket.name}/{name}"
    assert [(r["text"], r["label"], r["prediction_id"]) for r in lines] == [
        ("the soup", 1, soup_last["id"]),
        *[(f"review {i}", int(i % 2 == 0), rows[i]["id"]) for i in range(3)],
    ]
    assert {r["source"] for r in lines} == {"feedback"}
    assert lines[0]["answered_at"] == "2026-12-02T10:01:00.000000Z"
    state = store.read().state.export
    assert (state.watermark, state.rows, state.uri) == (t + timedelta(minutes=4), 4, first.uri)
    assert [e["kind"] for e in store.history()] == ["exported"]


def test_export_leaves_answers_younger_than_the_settling_time_for_the_next_export(
    exporter, clean_db, bucket, store
) -> None:
    settled = [answered(f"settled {i}", True, NOW - timedelta(minutes=10 + i)) for i in range(3)]
    young = answered("answered a minute ago", False, NOW - timedelta(seconds=60))  # may still be committing
    save(clean_db, *settled, young)

    first = exporter.export_if_due(NOW)
    rows = sorted(r["text"] for lines in exported_files(bucket).values() for r in lines)

    assert (first.exported, first.rows) == (True, 3)
    assert "answered a minute ago" not in rows
    assert store.read().state.export.watermark == NOW - timedelta(minutes=10)  # the young answer stays after it


def test_export_below_the_minimum_writes_nothing(exporter, clean_db, bucket, store) -> None:
    save(clean_db, answered("a", True, NOW - timedelta(hours=1)), answered("a", False, NOW - timedelta(minutes=30)))
    save(clean_db, answered("b", True, NOW - timedelta(minutes=20)))

    result = exporter.export_if_due(NOW)

    assert (result.exported, result.rows) == (False, 2)  # three answers, two texts: fewer than three
    assert exported_files(bucket) == {}
    assert store.read().update_time is None


def test_export_is_at_most_once_per_interval_and_continues_after_the_watermark(
    exporter, clean_db, bucket, store
) -> None:
    save(clean_db, *[answered(f"old {i}", True, NOW - timedelta(hours=3, minutes=i)) for i in range(3)])
    exporter.export_if_due(NOW)
    save(clean_db, *[answered(f"new {i}", False, NOW + timedelta(minutes=i)) for i in range(3)])

    too_soon = exporter.export_if_due(NOW + timedelta(minutes=59))
    later = exporter.export_if_due(NOW + timedelta(hours=1))

    assert (too_soon.exported, later.exported, later.rows) == (False, True, 3)
    files = exported_files(bucket)
    assert len(files) == 2
    assert sorted(r["text"] for r in files[later.uri.split("/", 3)[3]]) == ["new 0", "new 1", "new 2"]


def test_export_after_a_crash_before_the_watermark_advanced_writes_no_second_file(
    exporter, clean_db, bucket, store
) -> None:
    save(clean_db, *[answered(f"r {i}", True, NOW - timedelta(hours=1, minutes=i)) for i in range(3)])
    # The crash: the window's file is written, the watermark never advanced.
    name = export.object_name(DataLocation(bucket.name, "yelp-sentiment/"), None)
    answers = exporter.answers(None)
    bucket.blob(name).upload_from_string(export.to_json_lines(export.deduplicated(answers)))
    save(clean_db, answered("answered since", True, NOW - timedelta(minutes=5)))

    recovered = exporter.export_if_due(NOW)

    assert recovered.exported is False
    assert list(exported_files(bucket)) == [name]
    assert store.read().state.export.watermark == NOW - timedelta(hours=1)
    assert [a.text for a in exporter.answers(store.read().state.export.watermark)] == ["answered since"]


def test_tick_runs_the_export_before_fingerprinting_so_the_new_file_is_in_the_data(
    store, location, mlflow_server, bucket, clean_db, exporter, clock
) -> None:
    save(clean_db, *[answered(f"r {i}", True, NOW - timedelta(hours=1, minutes=i)) for i in range(3)])
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    before = list_training_data(client, location)

    result = retrainer(store, location, mlflow_server, CountingRunner(), clock, exporter=exporter).tick()

    assert result.export["exported"] is True
    names = [o.name for o in list_training_data(client, location)]
    assert len(names) == len(before) + 1
    assert "yelp-sentiment/feedback/feedback-start.jsonl" in names
    assert result.action is Action.STARTED
