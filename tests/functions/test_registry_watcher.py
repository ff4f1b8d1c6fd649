"""The promotion path in process: reconcile ticks and the redeploy consumer against a real MLflow server, the
Firestore, Pub/Sub and GCS emulators, and a local stand-in of the Cloud Run Admin API."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from localdev import services
from sentiment_core import events
from sentiment_core.deployment_store import DeploymentStore
from sentiment_core.deployments import Decision
from sentiment_core.records import COUNTER_WINDOWS, window_document_id, window_hour
from sentiment_core.registry import RegistryClient, RegistryError
from sentiment_core.rollout import Command, RolloutSettings
from sentiment_core.store import save_reference, window_evidence
from tests.functions.conftest import PROJECT, redeploy_module, watcher_module, wrong_shape_onnx
from tests.functions.fake_cloud_run import LATEST, FakeCloudRun
from tests.functions.watcher_support import Topics, Versions, constant_onnx, forged_records, write_eval_set

deployers = redeploy_module("deployers")
redeploy = redeploy_module("redeploy")
redeploy_decisions = redeploy_module("redeploy_decisions")
evaluation = watcher_module("evaluation")
publishing = watcher_module("publisher")
reconcile = watcher_module("reconcile")
staging = watcher_module("staging")
watcher_decisions = watcher_module("watcher_decisions")

MIN_ACCURACY = 0.9
SERVICE = f"projects/{PROJECT}/locations/europe-west1/services/predict"
HANG_S = 30.0


@pytest.fixture(scope="module")
def emulators(firestore_emulator, pubsub_emulator, gcs_emulator) -> Iterator[None]:
    """The clients made in this module talk to the emulators."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.url)
        patch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.url)
        patch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
        patch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        yield


@pytest.fixture(scope="module")
def versions(trained, emulators) -> Versions:
    return Versions(trained["tracking_uri"])


@pytest.fixture(scope="module")
def topics(emulators) -> Topics:
    return Topics(PROJECT)


@pytest.fixture(scope="module")
def bucket(emulators) -> str:
    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return client.create_bucket(f"serving-{os.getpid()}").name


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory) -> object:
    """One for the module, as one per instance in the cloud: the trained model is scored once."""
    return evaluation.Evaluator(write_eval_set(tmp_path_factory.mktemp("eval")))


@pytest.fixture(scope="module")
def watcher_db(emulators) -> firestore.Client:
    return firestore.Client(project=PROJECT, credentials=AnonymousCredentials())


class Loop:
    """One model's promotion loop: registry, state, staging, topic, consumer and a fake Cloud Run service."""

    def __init__(
        self, versions: Versions, topics: Topics, db: firestore.Client, bucket: str, cloud_run, evaluator
    ) -> None:
        self.versions = versions
        self.evaluator = evaluator
        self.topics = topics
        self.name = versions.new_model()
        self.topic = topics.topic()
        self.db = db
        self.state = DeploymentStore(db, self.name)
        self.bucket = bucket
        self.cloud_run = cloud_run
        self.redeployer = redeploy.Redeployer(
            self.state,
            deployers.CloudRunDeployer(SERVICE, client=_run_client(cloud_run.url)),
            redeploy_decisions.Policy(self.name, bucket),
        )

    def reconciler(self, registry: RegistryClient | None = None, publisher=None, **policy):
        # Immediate switches unless a test rolls out: most tests here are about getting one version to serve.
        policy = {"rollout": RolloutSettings(steps=(100,)), **policy}
        return reconcile.Reconciler(
            registry=registry or RegistryClient(self.versions.tracking_uri, timeout=2),
            store=self.state,
            stager=staging.GcsStager(self.bucket),
            publisher=publisher or publishing.PubSubPublisher(self.topic),
            policy=watcher_decisions.Policy(self.name, **policy),
            min_val_accuracy=MIN_ACCURACY,
            counts=functools.partial(window_evidence, self.db),
            save_reference=functools.partial(save_reference, self.db),
            evaluator=self.evaluator,
        )

    def tick(self, trigger: str = "test", *, policy: dict | None = None, **kwargs):
        return self.reconciler(**(policy or {})).tick(trigger, **kwargs)

    def rollout_tick(self, counters: firestore.Client, settings: RolloutSettings | None = None):
        """A tick with rollouts on (FAST unless given), its evidence read from `counters`."""
        reconciler = self.reconciler(rollout=settings or FAST)
        reconciler.counts = functools.partial(window_evidence, counters)
        return reconciler.tick("test")

    def deliver(self, event: dict) -> str:
        """What the push subscription does with one message: hand its event to the consumer."""
        data = {k: v for k, v in event.items() if not k.startswith("_")}
        return self.redeployer.handle(events.ProductionChanged.from_dict(data))

    def history(self, kind: str | None = None) -> list[dict]:
        entries = self.state.history(limit=200)
        return [e for e in entries if kind is None or e["kind"] == kind]


def _run_client(endpoint: str):
    from google.cloud import run_v2

    return run_v2.ServicesClient(
        credentials=AnonymousCredentials(), transport="rest", client_options={"api_endpoint": endpoint}
    )


@pytest.fixture
def loop(versions, topics, watcher_db, bucket, evaluator) -> Iterator[Loop]:
    with FakeCloudRun(SERVICE, "gs://nowhere/initial") as cloud_run:
        yield Loop(versions, topics, watcher_db, bucket, cloud_run, evaluator)


def serve(loop: Loop, version: str) -> dict:
    """Promote `version`, tick, deliver the one event: the version serves."""
    loop.versions.promote(loop.name, version)
    assert loop.tick().action == "published"
    (event,) = loop.topics.events(loop.topic)
    assert loop.deliver(event) in ("deployed", "rolled_back")
    return event


def test_promote_publishes_one_event_and_redeploys_once(loop: Loop) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)

    result = loop.tick()
    published = loop.topics.events(loop.topic)

    assert (result.action, result.desired_version, result.target_version) == ("published", version, version)
    (event,) = published
    assert event["_attributes"] == {"model_name": loop.name, "model_version": version}
    assert set(event) - {"_attributes"} == {
        "event_id",
        "model_name",
        "model_version",
        "mlflow_run_id",
        "model_uri",
        "sha256",
        "previous_version",
    }
    assert event["model_uri"] == f"gs://{loop.bucket}/{loop.name}/v{version}"
    assert event["previous_version"] is None
    assert event["event_id"] == result.event_id

    assert loop.deliver(event) == "deployed"
    assert loop.deliver(event) == "already_serving"  # a redelivery of the same message
    assert loop.deliver(dict(event)) == "already_serving"  # a duplicate published again

    assert len(loop.cloud_run.patches) == 1
    patch = loop.cloud_run.patches[0]
    assert {"name": "MODEL_URI", "value": event["model_uri"]} in patch["template"]["containers"][0]["env"]
    assert patch["traffic"] == [{"type": LATEST, "percent": 100}]  # the manual split is replaced
    assert patch["template"]["labels"]["model-version"] == version
    assert loop.state.read().state.serving.version == version
    assert [e["kind"] for e in reversed(loop.history())] == ["staged", "published", "deployed"]

    assert loop.tick().action == "up_to_date"
    assert loop.topics.events(loop.topic) == []


def test_staged_folder_holds_the_model_and_its_manifest(loop: Loop, versions: Versions) -> None:
    from sentiment_core.manifest import Manifest, sha256_bytes

    version = loop.versions.add(loop.name)
    event = serve(loop, version)

    bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(loop.bucket)
    prefix = event["model_uri"].removeprefix(f"gs://{loop.bucket}/")
    manifest = Manifest.from_json(bucket.blob(f"{prefix}/manifest.json").download_as_bytes())
    model = bucket.blob(f"{prefix}/model.onnx").download_as_bytes()

    assert (manifest.model_name, manifest.model_version) == (loop.name, version)
    assert manifest.mlflow_run_id == versions.run_id
    assert manifest.sha256 == sha256_bytes(model) == sha256_bytes(versions.model_bytes) == event["sha256"]


def test_ten_concurrent_ticks_on_one_change_publish_one_event(loop: Loop) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    reconcilers = [loop.reconciler() for _ in range(10)]
    results: list = []
    start = threading.Barrier(10)

    def tick(reconciler) -> None:
        start.wait()
        results.append(reconciler.tick("concurrent"))

    threads = [threading.Thread(target=tick, args=(r,)) for r in reconcilers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 10
    assert sorted(r.action for r in results).count("published") == 1
    assert {r.action for r in results} <= {"published", "in_progress", "up_to_date"}
    assert len(loop.topics.events(loop.topic)) == 1
    assert len(loop.history("staged")) == 1


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        (lambda v: {"model_bytes": b"\x08\x07corrupt onnx bytes"}, "model_invalid"),
        (lambda v: {"model_bytes": wrong_shape_onnx()}, "model_invalid"),
        (lambda v: {"logged_sha256": "0" * 64}, "sha256_mismatch"),
        (
            lambda v: {"golden": {**v.golden, "probabilities": [1 - p for p in v.golden["probabilities"]]}},
            "golden_outputs_not_reproduced",
        ),
        (lambda v: {"val_accuracy": MIN_ACCURACY - 0.01}, "validation_accuracy_below_minimum"),
        # The attack: a graph that answers 0.99 whatever the text, its run's records forged to agree with it.
        (
            lambda v: {"model_bytes": constant_onnx(), **forged_records(constant_onnx(), v.golden, v.reference)},
            "eval_accuracy_below_minimum",
        ),
    ],
    ids=["corrupt", "wrong-shape", "sha256-mismatch", "golden-not-reproduced", "low-accuracy", "constant-forged"],
)
def test_bad_candidate_is_refused_recorded_and_not_retried(loop: Loop, variant, reason: str) -> None:
    good = loop.versions.add(loop.name)
    serve(loop, good)
    bad = loop.versions.add_variant(loop.name, **variant(loop.versions))
    loop.versions.promote(loop.name, bad)

    first = loop.tick()
    again = [loop.tick() for _ in range(3)]

    assert (first.action, first.serving_version, first.target_version) == ("refused", good, good)
    assert first.detail.startswith(reason)
    assert [r.action for r in again] == ["refused_earlier"] * 3
    (refusal,) = loop.history("refused")
    assert (refusal["version"], refusal["reason"]) == (bad, reason)
    assert loop.topics.events(loop.topic) == []
    assert len(loop.cloud_run.patches) == 1  # the good version's deploy only
    assert loop.cloud_run.model_uri().endswith(f"/v{good}")


def test_constant_graph_with_forged_records_is_refused_on_the_watchers_evaluation(loop: Loop) -> None:
    good = loop.versions.add(loop.name)
    serve(loop, good)
    model = constant_onnx(0.99)
    bad = loop.versions.add_variant(
        loop.name, model_bytes=model, **forged_records(model, loop.versions.golden, loop.versions.reference)
    )
    loop.versions.promote(loop.name, bad)

    result = loop.tick()

    assert (result.action, result.serving_version) == ("refused", good)
    (refusal,) = loop.history("refused")
    assert (refusal["version"], refusal["reason"]) == (bad, "eval_accuracy_below_minimum")
    figures = refusal["evaluation"]
    assert (figures["n"], figures["serving_version"]) == (2000, good)
    assert figures["candidate_accuracy"] < 0.65 < 0.85 <= figures["serving_accuracy"]
    assert f"n={figures['n']}" in refusal["detail"]
    (staged,) = loop.history("staged")  # the good version's figures were recorded when it was staged
    assert staged["evaluation"]["candidate_accuracy"] == figures["serving_accuracy"]
    assert loop.topics.events(loop.topic) == []


def test_candidate_far_below_the_serving_version_is_refused_as_a_regression(loop: Loop) -> None:
    good = loop.versions.add(loop.name)
    serve(loop, good)
    model = constant_onnx(0.99)
    worse = loop.versions.add_variant(
        loop.name, model_bytes=model, **forged_records(model, loop.versions.golden, loop.versions.reference)
    )
    loop.versions.promote(loop.name, worse)

    # No minimum: only the comparison with the version serving (scored from its staged file) refuses it.
    result = loop.tick(policy={"evaluation": watcher_decisions.EvalLimits(min_accuracy=0.0)})

    assert result.action == "refused"
    (refusal,) = loop.history("refused")
    assert refusal["reason"] == "eval_accuracy_regression"
    assert refusal["evaluation"]["serving_version"] == good


def test_evaluation_set_missing_fails_the_tick_and_releases_the_claim(loop: Loop, tmp_path) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    reconciler = loop.reconciler()
    reconciler.evaluator = evaluation.Evaluator(f"file://{tmp_path}/missing.jsonl")

    with pytest.raises(evaluation.EvaluationUnavailable, match="does not exist"):
        reconciler.tick("test")

    assert loop.state.read().state.claim is None  # the next tick tries again at once
    assert loop.topics.events(loop.topic) == []
    assert loop.tick().action == "published"  # the set is there again


def test_refused_version_promoted_again_is_checked_again(loop: Loop) -> None:
    bad = loop.versions.add_variant(loop.name, val_accuracy=0.5)
    loop.versions.promote(loop.name, bad)
    assert loop.tick().action == "refused"

    loop.versions.promote(loop.name, bad)  # the webhook of this alias move asks for a fresh look
    assert loop.tick(retry_refused=bad).action == "refused"

    assert len(loop.history("refused")) == 2


def test_alias_deleted_keeps_the_serving_version(loop: Loop) -> None:
    version = loop.versions.add(loop.name)
    serve(loop, version)
    loop.versions.unpromote(loop.name)

    result = loop.tick()
    loop.tick()

    assert (result.action, result.serving_version, result.target_version) == ("no_production_version", version, version)
    assert "keeping version" in result.detail
    assert len(loop.history("no_production_version")) == 1  # said once, not every tick
    assert loop.topics.events(loop.topic) == []
    assert len(loop.cloud_run.patches) == 1
    assert loop.state.read().state.serving.version == version


def test_legacy_stage_production_is_honoured_and_the_alias_wins(loop: Loop) -> None:
    staged = loop.versions.add(loop.name)
    aliased = loop.versions.add(loop.name)
    with pytest.warns(FutureWarning):
        loop.versions.client.transition_model_version_stage(loop.name, staged, "Production")

    assert loop.tick().target_version == staged
    loop.versions.promote(loop.name, aliased)
    assert loop.tick().target_version == aliased


def test_rollback_is_promoting_the_older_version_again(loop: Loop) -> None:
    v1 = loop.versions.add(loop.name)
    v2 = loop.versions.add(loop.name)
    serve(loop, v1)
    serve(loop, v2)

    loop.versions.promote(loop.name, v1)
    assert loop.tick().action == "published"
    (event,) = loop.topics.events(loop.topic)
    kind = loop.deliver(event)

    assert (event["model_version"], event["previous_version"]) == (v1, v2)
    assert kind == "rolled_back"
    assert loop.cloud_run.model_uri() == f"gs://{loop.bucket}/{loop.name}/v{v1}"
    assert loop.state.read().state.serving.version == v1
    assert len(loop.cloud_run.patches) == 3


def test_superseded_event_deploys_nothing(loop: Loop) -> None:
    v1 = loop.versions.add(loop.name)
    v2 = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, v1)
    loop.tick()
    (old,) = loop.topics.events(loop.topic)
    event = serve(loop, v2)

    assert loop.deliver(old) == "superseded"
    assert loop.cloud_run.model_uri() == event["model_uri"]
    assert len(loop.cloud_run.patches) == 1


def test_planted_event_outside_the_serving_bucket_is_refused_recorded_and_acknowledged(loop: Loop) -> None:
    """issue #17: an outbox planted in the deployment document was published and deployed. Now an event whose
    model_uri is not its version's staged folder deploys nothing, raises nothing (Pub/Sub does not retry it) and
    leaves a `refused` entry; the version in service keeps serving."""
    event = serve(loop, loop.versions.add(loop.name))
    planted = {**event, "event_id": "planted", "model_version": "99", "model_uri": "gs://attacker-public-bucket/evil"}

    assert loop.deliver(planted) == "refused"

    assert len(loop.cloud_run.patches) == 1  # only the real deploy
    assert loop.cloud_run.model_uri() == event["model_uri"]
    (refusal,) = loop.history("refused")
    assert (refusal["reason"], refusal["event_id"], refusal["model_uri"]) == (
        "model_uri_not_allowed",
        "planted",
        "gs://attacker-public-bucket/evil",
    )
    assert loop.state.read().state.deploying is None


def test_failed_deploy_is_recorded_and_the_redelivery_deploys(loop: Loop) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    loop.tick()
    (event,) = loop.topics.events(loop.topic)
    loop.cloud_run.fail_next_operation = True

    with pytest.raises(deployers.DeployError, match="revision failed to start"):
        loop.deliver(event)
    assert loop.state.read().state.serving is None
    assert loop.deliver(event) == "deployed"  # Pub/Sub delivers it again

    (failure,) = loop.history("failed")
    assert "revision failed to start" in failure["error"]


def test_revision_that_never_gets_ready_is_a_failed_deploy(loop: Loop) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    loop.tick()
    (event,) = loop.topics.events(loop.topic)
    loop.cloud_run.never_ready = True

    with pytest.raises(deployers.DeployError, match="not ready"):
        loop.deliver(event)


def test_event_lost_after_publishing_is_announced_again_and_the_version_then_serves(loop: Loop) -> None:
    """Pub/Sub confirmed the event but it never reached the consumer (dropped, or an emulator restarted)."""
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    assert loop.tick().action == "published"
    (lost,) = loop.topics.events(loop.topic)  # taken off the topic and never delivered

    assert loop.tick().action == "up_to_date"  # not yet: the event may still be on its way
    again = loop.tick(policy={"reannounce_after_s": 0})
    (event,) = loop.topics.events(loop.topic)

    assert again.action == "published"
    assert event["event_id"] == lost["event_id"]  # the same change, so a late original deploys nothing twice
    assert loop.deliver(event) == "deployed"
    assert loop.state.read().state.serving.version == version
    assert [e["version"] for e in loop.history("reannounced")] == [version]
    assert loop.tick(policy={"reannounce_after_s": 0}).action == "up_to_date"


def test_mlflow_down_fails_the_tick_fast_and_the_next_tick_catches_up(loop: Loop, mlflow_server) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    with services.frozen(mlflow_server.pid):  # hung, not gone: the worst case for timeouts
        started = time.monotonic()
        with pytest.raises(RegistryError):
            loop.tick()
        elapsed = time.monotonic() - started

    # Not a figure (the client's timeout is 2 s; bench/ measures): only a tick that waits on the hung server
    # for ever, as with no timeout at all, gets near this.
    assert elapsed < HANG_S
    assert loop.topics.events(loop.topic) == []
    assert loop.state.read().state.claim is None
    assert loop.tick().action == "published"


def test_unconfirmed_publish_stays_in_the_outbox_and_the_next_tick_sends_it(loop: Loop, topics: Topics) -> None:
    version = loop.versions.add(loop.name)
    loop.versions.promote(loop.name, version)
    missing_topic = publishing.PubSubPublisher(topics.publisher.topic_path(PROJECT, "no-such-topic"), timeout_s=5)

    with pytest.raises(reconcile.PublishError):
        loop.reconciler(publisher=missing_topic).tick("test")
    pending = loop.state.read().state.outbox
    result = loop.tick()

    assert pending.model_version == version
    assert (result.action, result.event_id) == ("republished", pending.event_id)
    (event,) = loop.topics.events(loop.topic)
    assert event["event_id"] == pending.event_id
    assert loop.state.read().state.outbox is None


# Progressive rollouts: the policy's decisions on window counters, applied by the redeploy on the Cloud Run
# stand-in, and told to the registry.
FAST = RolloutSettings(steps=(10, 50, 100), bake_s=0, min_feedback=20, max_s=3600)


@pytest.fixture
def counters(emulators) -> firestore.Client:
    """Window counters of their own (a project per test): versions "1" and "2" of every test model share ids."""
    return firestore.Client(project=f"{PROJECT}-{uuid.uuid4().hex[:6]}", credentials=AnonymousCredentials())


def count(db: firestore.Client, version: str, **fields: int) -> None:
    """Window counters as predict and feedback write them (one shard, this hour); every answer counted as evidence
    (each from a client under its cap)."""
    now = datetime.now(UTC)
    document = db.collection(COUNTER_WINDOWS).document(window_document_id(version, now, 0))
    evidence = {f"evidence_{name}": fields[name] for name in ("feedback", "correct") if name in fields}
    document.set({"model_version": version, "hour": window_hour(now), **fields, **evidence})


def rolling_loop(loop: Loop, counters: firestore.Client) -> tuple[str, str]:
    """v1 serving, v2 promoted and deployed beside it at the first step: (v1, v2)."""
    v1, v2 = loop.versions.add(loop.name), loop.versions.add(loop.name)
    serve(loop, v1)
    loop.versions.promote(loop.name, v2)
    started = loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    assert (started.action, event["model_version"], event["previous_version"]) == ("published", v2, v1)
    assert loop.deliver(event) == "traffic_moved"
    return v1, v2


def version_tags(loop: Loop, version: str) -> dict[str, str]:
    return dict(loop.versions.client.get_model_version(loop.name, version).tags)


def test_rollout_of_a_worse_candidate_is_rolled_back_and_the_registry_tells_why(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    stable, candidate = loop.cloud_run.shares(), loop.cloud_run.tags()["candidate"]
    count(counters, v1, predictions=900, positive=450, feedback=300, correct=285)
    count(counters, v2, predictions=100, positive=50, feedback=100, correct=60)

    decided = loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    drained = loop.deliver(event)
    after = loop.tick()

    assert sorted(stable.values()) == [10, 90]
    assert decided.rollout["action"] == "roll_back"
    assert decided.rollout["reason"] == "feedback_worse"
    assert (event["model_version"], event["previous_version"]) == (v1, v2)
    assert drained == "traffic_moved"
    assert list(loop.cloud_run.shares().values()) == [100]
    assert candidate not in loop.cloud_run.shares()
    assert loop.versions.client.get_model_version_by_alias(loop.name, "production").version == v1
    assert version_tags(loop, v2) == {"deployment_status": "rolled_back", "deployment_reason": "feedback_worse"}
    (entry,) = loop.history("rollout_rolled_back")
    feedback = next(check for check in entry["checks"] if check["name"] == "feedback_worse")
    assert (feedback["candidate_events"], feedback["stable_events"], feedback["failed"]) == (40, 15, True)
    assert [e["version"] for e in loop.history("registry_updated")] == [v2]
    state = loop.state.read().state
    assert (state.serving.version, state.canary, state.rollout.state.value) == (v1, None, "rolled_back")
    assert (after.action, loop.topics.events(loop.topic)) == ("up_to_date", [])


def test_rollout_of_an_equal_candidate_advances_completes_and_retires_the_old_version(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    candidate = loop.cloud_run.tags()["candidate"]
    count(counters, v1, predictions=900, positive=450, feedback=90, correct=81)
    count(counters, v2, predictions=100, positive=50, feedback=10, correct=9)

    advanced = loop.rollout_tick(counters)
    (step,) = loop.topics.events(loop.topic)
    moved = loop.deliver(step)
    at_50 = loop.cloud_run.shares()
    count(counters, v2, predictions=500, positive=250, feedback=50, correct=45)
    completed = loop.rollout_tick(counters)
    (last,) = loop.topics.events(loop.topic)
    tags_before = version_tags(loop, v2)
    done = loop.deliver(last)
    loop.rollout_tick(counters)  # the registry is told once the candidate has all the traffic

    assert (advanced.rollout["action"], advanced.rollout["candidate_percent"], moved) == (
        "advance",
        50,
        "traffic_moved",
    )
    assert sorted(at_50.values()) == [50, 50]
    assert (completed.rollout["action"], completed.rollout["reason"], done) == (
        "complete",
        "evidence_holds",
        "traffic_moved",
    )
    assert loop.cloud_run.shares() == {candidate: 100}
    state = loop.state.read().state
    assert (state.serving.version, state.canary, state.rollout.state.value) == (v2, None, "completed")
    assert "deployment_status" not in tags_before
    assert version_tags(loop, v2)["deployment_status"] == "serving"
    assert version_tags(loop, v1)["deployment_status"] == "retired"
    assert loop.versions.client.get_model_version_by_alias(loop.name, "production").version == v2


def test_rollout_aborted_by_a_person_restores_the_stable_version(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    abort = watcher_decisions.Commanded(Command.ABORT, "POST /rollout")
    loop.state.apply(
        lambda state, now: watcher_decisions.decide(state, abort, watcher_decisions.Policy(loop.name), now)
    )

    decided = loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    loop.deliver(event)

    assert (decided.rollout["action"], decided.rollout["reason"]) == ("roll_back", "aborted")
    assert list(loop.cloud_run.shares().values()) == [100]
    assert loop.state.read().state.serving.version == v1
    assert loop.versions.client.get_model_version_by_alias(loop.name, "production").version == v1
    assert version_tags(loop, v2) == {"deployment_status": "rolled_back", "deployment_reason": "aborted"}


def test_alias_moved_back_during_a_rollout_aborts_it(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    loop.versions.promote(loop.name, v1)

    decided = loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    loop.deliver(event)

    assert (decided.rollout["action"], decided.rollout["reason"]) == ("roll_back", "aborted")
    assert list(loop.cloud_run.shares().values()) == [100]
    assert loop.state.read().state.canary is None
    assert version_tags(loop, v2)["deployment_reason"] == "aborted"


def test_rolled_back_version_promoted_again_starts_a_new_rollout(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    loop.versions.promote(loop.name, v1)
    loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    loop.deliver(event)
    quiet = loop.rollout_tick(counters)

    loop.versions.promote(loop.name, v2)
    again = loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)

    assert quiet.action == "up_to_date"
    assert (again.action, event["model_version"], event["previous_version"]) == ("published", v2, v1)
    assert loop.deliver(event) == "traffic_moved"
    rollout = loop.state.read().state.rollout
    assert (rollout.state.value, rollout.candidate_percent) == ("in_progress", 10)
    assert len(loop.cloud_run.shares()) == 2


class AbortDuringCandidateDeploy:
    """The Cloud Run deployer, with a person moving the alias back (and a tick deciding the abort) while the
    candidate's revision is starting: the document does not show the candidate yet when the abort is decided."""

    def __init__(self, inner, loop: Loop, counters: firestore.Client, stable: str) -> None:
        self.inner, self.loop, self.counters, self.stable = inner, loop, counters, stable

    def deploy_candidate(self, event, percent):
        deployed = self.inner.deploy_candidate(event, percent)
        self.loop.versions.promote(self.loop.name, self.stable)
        assert self.loop.rollout_tick(self.counters).rollout["reason"] == "aborted"
        return deployed

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_abort_decided_while_the_candidate_starts_is_applied_by_the_same_delivery(loop: Loop, counters) -> None:
    v1, v2 = loop.versions.add(loop.name), loop.versions.add(loop.name)
    serve(loop, v1)
    loop.versions.promote(loop.name, v2)
    loop.rollout_tick(counters)
    (event,) = loop.topics.events(loop.topic)
    loop.redeployer.deployer = AbortDuringCandidateDeploy(loop.redeployer.deployer, loop, counters, v1)

    done = loop.deliver(event)
    (rollback_event,) = loop.topics.events(loop.topic)
    loop.redeployer.deployer = loop.redeployer.deployer.inner
    again = loop.deliver(rollback_event)

    state = loop.state.read().state
    assert done == "traffic_moved"
    assert rollback_event["model_version"] == v1
    assert list(loop.cloud_run.shares().values()) == [100]
    assert (state.serving.version, state.canary) == (v1, None)
    assert again == "already_serving"
    assert [e["percent"] for e in loop.history("traffic")] == [0, 10]  # deployed at 10%, then drained


def test_candidate_live_but_never_recorded_is_drained_by_the_next_delivery(loop: Loop, counters) -> None:
    v1, _ = rolling_loop(loop, counters)
    candidate = loop.cloud_run.tags()["candidate"]
    # A crash between the candidate's deploy and its record: the document forgets it.
    loop.state.apply(
        lambda state, now: Decision(redeploy_decisions.Action.FAILED, dataclasses.replace(state, canary=None))
    )
    loop.versions.promote(loop.name, v1)
    loop.rollout_tick(counters)  # an abort: the stable version announced again
    (event,) = loop.topics.events(loop.topic)

    done = loop.deliver(event)

    assert done == "traffic_moved"
    assert candidate not in loop.cloud_run.shares()
    drained = loop.history("traffic")[0]
    assert (drained["revision"], drained["percent"]) == (candidate, 0)


class RegistryDownAfterTheDecision(RegistryClient):
    """MLflow answers reads but refuses writes: the tick that ends a rollout cannot tell the registry."""

    def _write(self, path, body, what):
        raise RegistryError(f"{what}: MLflow is down")


def test_registry_told_by_the_next_tick_after_it_failed_when_the_rollout_ended(loop: Loop, counters) -> None:
    v1, v2 = rolling_loop(loop, counters)
    count(counters, v1, predictions=900, positive=450, feedback=300, correct=285)
    count(counters, v2, predictions=100, positive=50, feedback=100, correct=60)
    reconciler = loop.reconciler(registry=RegistryDownAfterTheDecision(loop.versions.tracking_uri, timeout=2))
    reconciler.policy = dataclasses.replace(reconciler.policy, rollout=FAST)
    reconciler.counts = functools.partial(window_evidence, counters)

    with pytest.raises(RegistryError):
        reconciler.tick("test")
    pending = loop.state.read().state.rollout
    repaired = loop.tick()

    assert (pending.state.value, pending.registry_updated) == ("rolled_back", False)
    assert loop.versions.client.get_model_version_by_alias(loop.name, "production").version == v1
    assert version_tags(loop, v2) == {"deployment_status": "rolled_back", "deployment_reason": "feedback_worse"}
    assert loop.state.read().state.rollout.registry_updated is True
    assert repaired.action in ("up_to_date", "published")
