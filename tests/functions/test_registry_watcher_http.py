"""registry_watcher and the redeploy as deployed: each unit under functions-framework with only its own settings,
MLflow's own webhooks, a Pub/Sub push subscription with a dead-letter topic, Firestore, GCS, and the Cloud Run
Admin API stand-in."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localdev import services
from sentiment_core import rollout
from sentiment_core.deployments import DeploymentState, Desired, Rollout, RolloutCommand
from tests import support
from tests.functions.conftest import PROJECT, call, watcher_module
from tests.functions.fake_cloud_run import FakeCloudRun
from tests.functions.watcher_support import Topics, Versions, eval_set_bytes

webhook = watcher_module("webhook")

WEBHOOK_SECRET = "webhook-secret-0123456789abcdef"
SERVICE = f"projects/{PROJECT}/locations/europe-west1/services/predict"
MAX_DELIVERY_ATTEMPTS = 5
AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def eventually(
    check: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.2, context: Callable[[], str] = str
) -> Any:
    """Poll until check() returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s\n{context()}")
        time.sleep(interval_s)


@pytest.fixture(scope="module")
def stack(trained, firestore_emulator, pubsub_emulator, gcs_emulator, tmp_path_factory) -> Iterator[dict]:
    """Model, topic, subscriptions, bucket, the two units and an MLflow webhook, for this module."""
    workdir = tmp_path_factory.mktemp("watcher-http")
    with pytest.MonkeyPatch.context() as patch:
        emulator_env = {
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
            "PUBSUB_EMULATOR_HOST": pubsub_emulator.url,
            "STORAGE_EMULATOR_HOST": gcs_emulator.url,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
        for key, value in emulator_env.items():
            patch.setenv(key, value)
        versions = Versions(trained["tracking_uri"])
        topics = Topics(PROJECT)
        name = versions.new_model("wh")
        topic = topics.topic()
        dead_letter = topics.topic("dead-letter")
        bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(
            f"serving-http-{uuid.uuid4().hex[:8]}"
        )
        # The watcher's evaluation set in a bucket of its own, read through the Storage client (gs://).
        eval_bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(
            f"eval-http-{uuid.uuid4().hex[:8]}"
        )
        eval_bucket.blob(f"{name}/eval.jsonl").upload_from_string(eval_set_bytes())
        with FakeCloudRun(SERVICE, "gs://nowhere/initial") as cloud_run:
            watcher_env = {
                **emulator_env,
                "MODEL_NAME": name,
                "MLFLOW_TRACKING_URI": trained["tracking_uri"],
                "MLFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "SERVING_BUCKET": bucket.name,
                "PUBSUB_TOPIC": topic,
                "MIN_VALIDATION_ACCURACY": "0.9",
                "EVAL_SET_URI": f"gs://{eval_bucket.name}/{name}/eval.jsonl",
                "ROLLOUT_STEPS": "100",  # these tests are about one version serving; rollouts: test_registry_watcher
            }
            # The redeploy gets no MLflow setting and no webhook secret: it starts and works without them.
            redeploy_env = {
                "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "MODEL_NAME": name,
                "DEPLOYER": "cloud_run",
                "PREDICT_SERVICE": SERVICE,
                "CLOUD_RUN_ENDPOINT": cloud_run.url,
                "SERVING_BUCKET": bucket.name,
            }
            with (
                services.start_function("registry_watcher", workdir, watcher_env, ready_path="/status") as watcher,
                services.start_function(
                    "redeploy", workdir, redeploy_env, target="on_production_changed", ready_any_status=True
                ) as consumer,
            ):
                topics.subscription(
                    topic,
                    "push",
                    push_config={"push_endpoint": f"{consumer.url}/{topic}"},
                    dead_letter_policy={
                        "dead_letter_topic": dead_letter,
                        "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS,
                    },
                    ack_deadline_seconds=60,
                )
                hook = versions.client.create_webhook(
                    name=f"watcher-{name}",
                    url=f"{watcher.url}/webhook",
                    events=["model_version_alias.created", "model_version_alias.deleted"],
                    secret=WEBHOOK_SECRET,
                )
                time.sleep(1.1)  # the server's webhook cache lives 1 s (MLFLOW_WEBHOOK_CACHE_TTL, localdev)
                try:
                    yield {
                        "name": name,
                        "versions": versions,
                        "topics": topics,
                        "topic": topic,
                        "dead_letter": dead_letter,
                        "watcher": watcher,
                        "consumer": consumer,
                        "cloud_run": cloud_run,
                    }
                finally:
                    versions.client.delete_webhook(hook.webhook_id)


def status(stack: dict) -> dict:
    answer = call(f"{stack['watcher'].url}/status")
    assert answer.status == 200, answer.raw
    return answer.json


def serving(stack: dict, version: str) -> bool:
    return (status(stack)["serving"] or {}).get("version") == version


def logs(stack: dict) -> str:
    """Both units' logs, for the message of a failed wait."""
    return "\n".join(services.tail(stack[name].log_path, 40) for name in ("watcher", "consumer"))


def test_alias_set_in_mlflow_redeploys_predict_through_webhook_event_and_push(stack: dict) -> None:
    version = stack["versions"].add(stack["name"])

    stack["versions"].promote(stack["name"], version)
    eventually(lambda: serving(stack, version), context=lambda: logs(stack))

    history = status(stack)["history"]
    assert [e["kind"] for e in reversed(history)][-3:] == ["staged", "published", "deployed"]
    assert history[-1]["trigger"] == "webhook:model_version_alias.created"
    assert len(stack["topics"].events(stack["topic"])) == 1
    assert len(stack["cloud_run"].patches) == 1
    assert stack["cloud_run"].model_uri().endswith(f"/{stack['name']}/v{version}")


def test_scheduler_tick_over_http_answers_where_things_stand(stack: dict) -> None:
    answer = call(stack["watcher"].url, {}, headers={"User-Agent": "Google-Cloud-Scheduler"})

    assert answer.status == 200
    assert answer.json["action"] in ("up_to_date", "no_production_version", "published")
    assert set(answer.json) >= {"desired_version", "target_version", "serving_version"}


def signed(body: bytes, *, delivery: str | None = None, timestamp: int | None = None, secret: str = WEBHOOK_SECRET):
    delivery = delivery or uuid.uuid4().hex
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "Content-Type": "application/json",
        webhook.DELIVERY_ID_HEADER: delivery,
        webhook.TIMESTAMP_HEADER: stamp,
        webhook.SIGNATURE_HEADER: webhook.sign(secret.encode(), delivery, stamp, body),
    }


def alias_body(stack: dict, version: str) -> bytes:
    data = {"name": stack["name"], "alias": "production", "version": version}
    return json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "t", "data": data}).encode()


@pytest.mark.parametrize(
    "headers",
    [
        lambda body: signed(body, secret="not-the-webhook-secret-000"),
        lambda body: signed(body, timestamp=int(time.time()) - 3600),
        lambda body: {"Content-Type": "application/json"},
    ],
    ids=["bad-signature", "stale", "unsigned"],
)
def test_webhook_not_signed_by_mlflow_is_401_and_changes_nothing(stack: dict, headers) -> None:
    bad = stack["versions"].add(stack["name"])  # in the body, never promoted
    before = status(stack)
    body = alias_body(stack, bad)

    answer = call(f"{stack['watcher'].url}/webhook", raw=body, headers=headers(body))

    assert (answer.status, answer.error_code) == (401, "invalid_signature")
    assert status(stack)["history"] == before["history"]
    assert stack["topics"].events(stack["topic"]) == []


def test_webhook_replayed_delivery_is_401(stack: dict) -> None:
    body = json.dumps({"entity": "registered_model", "action": "created", "timestamp": "t", "data": {}}).encode()
    headers = signed(body)

    first = call(f"{stack['watcher'].url}/webhook", raw=body, headers=headers)
    replay = call(f"{stack['watcher'].url}/webhook", raw=body, headers=headers)

    assert (first.status, first.json["action"]) == (200, "ignored")
    assert (replay.status, replay.error_code) == (401, "replayed_delivery")


def test_duplicated_pubsub_message_redeploys_nothing(stack: dict) -> None:
    version = stack["versions"].add(stack["name"])
    stack["versions"].promote(stack["name"], version)
    eventually(lambda: serving(stack, version), context=lambda: logs(stack))
    (event,) = stack["topics"].events(stack["topic"])
    patches = len(stack["cloud_run"].patches)

    data = json.dumps({k: v for k, v in event.items() if k != "_attributes"}).encode()
    stack["topics"].publisher.publish(stack["topic"], data, **event["_attributes"]).result(timeout=10)
    eventually(lambda: "already_serving" in stack["consumer"].log_path.read_text())

    assert len(stack["cloud_run"].patches) == patches


def test_event_that_cannot_be_processed_ends_in_the_dead_letter_topic(stack: dict) -> None:
    stack["topics"].publisher.publish(stack["topic"], b"not an event", model_name="x").result(timeout=10)

    (message,) = eventually(lambda: stack["topics"].messages(stack["dead_letter"]), timeout_s=60)

    assert (message.data, message.attributes["model_name"]) == (b"not an event", "x")
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == str(MAX_DELIVERY_ATTEMPTS)
    assert "cannot be processed" in stack["consumer"].log_path.read_text()


@pytest.fixture(scope="module")
def lone_watcher(firestore_emulator, tmp_path_factory) -> Iterator[dict]:
    """The watcher alone on Firestore, for the routes that read and write only the deployment document: its
    registry, bucket and topic are never reached (nothing listens at the MLflow address)."""
    name = f"rollout-{uuid.uuid4().hex[:8]}"
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "MODEL_NAME": name,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{services.free_port()}",
        "MLFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SERVING_BUCKET": "never-used",
        "EVAL_SET_URI": "gs://never-used/eval.jsonl",
    }
    workdir = tmp_path_factory.mktemp("lone-watcher")
    with services.start_function("registry_watcher", workdir, env, ready_path="/status") as watcher:
        yield {"name": name, "watcher": watcher}


def store_state(db, name: str, state: DeploymentState) -> None:
    """The deployment document as the watcher and the redeploy store it."""
    db.collection("deployments").document(name).set(state.to_document())


def baking_rollout(command: RolloutCommand | None = None) -> Rollout:
    """Version 2 at 10% beside version 1, its first decision a hold while it bakes; a person's command if any."""
    return dataclasses.replace(support.baking_rollout(AT), command=command)


def test_status_rollout_is_null_when_no_rollout_was_ever_recorded(lone_watcher: dict, db) -> None:
    store_state(db, lone_watcher["name"], DeploymentState(desired=Desired("1", "r1", "alias")))

    answer = status(lone_watcher)

    assert answer["rollout"] is None
    assert answer["desired"]["version"] == "1"


def test_status_shows_the_rollout_in_progress_with_its_evidence_and_next_decision(lone_watcher: dict, db) -> None:
    store_state(db, lone_watcher["name"], DeploymentState(rollout=baking_rollout()))

    shown = status(lone_watcher)["rollout"]

    assert set(shown) == {
        "state",
        "stable_version",
        "candidate_version",
        "candidate_percent",
        "step",
        "started_at",
        "evidence",
        "next_decision",
    }
    assert (shown["state"], shown["stable_version"], shown["candidate_version"]) == ("in_progress", "1", "2")
    assert (shown["candidate_percent"], shown["step"], shown["started_at"]) == (10, 0, "2025-06-01T12:00:00Z")
    feedback = shown["evidence"]["checks"]["feedback_worse"]
    assert (feedback["candidate_events"], feedback["candidate_total"], feedback["stable_total"]) == (1, 20, 180)
    assert feedback["failed"] is False
    assert feedback["threshold"] > feedback["statistic"]
    assert set(shown["evidence"]["checks"]) == {"server_errors", "feedback_worse", "positive_rate_shift"}
    assert (shown["next_decision"]["action"], shown["next_decision"]["reason"]) == ("hold", "baking")


def test_status_of_a_finished_rollout_keeps_its_numbers_and_has_no_next_decision(lone_watcher: dict, db) -> None:
    pending = baking_rollout(RolloutCommand(rollout.Command.ABORT, AT, "POST /rollout"))
    nothing = rollout.VersionCounts("1"), rollout.VersionCounts("2")
    evidence = rollout.RolloutEvidence(*nothing, ready=True, command=rollout.Command.ABORT)
    decision = rollout.decide(pending.policy_state(), evidence, rollout.RolloutSettings(), AT + timedelta(minutes=6))
    store_state(db, lone_watcher["name"], DeploymentState(rollout=pending.decided(decision, AT)))

    shown = status(lone_watcher)["rollout"]

    assert (shown["state"], shown["candidate_percent"], shown["next_decision"]) == ("aborted", 0, None)
    assert (shown["evidence"]["action"], shown["evidence"]["reason"]) == ("roll_back", "aborted")


def rollout_url(lone_watcher: dict) -> str:
    return f"{lone_watcher['watcher'].url}/rollout"


def stored_rollout(db, name: str) -> Rollout | None:
    return DeploymentState.from_document(db.collection("deployments").document(name).get().to_dict()).rollout


@pytest.mark.parametrize("action", ["abort", "complete"])
def test_rollout_command_during_a_rollout_is_202_recorded_with_a_history_entry(lone_watcher: dict, db, action) -> None:
    store_state(db, lone_watcher["name"], DeploymentState(rollout=baking_rollout()))

    answer = call(rollout_url(lone_watcher), {"action": action})

    assert answer.status == 202, answer.raw
    assert answer.json["action"] == action
    assert stored_rollout(db, lone_watcher["name"]).command.command == action
    expected = {"abort": ("roll_back", "aborted"), "complete": ("complete", "completed_by_operator")}[action]
    shown = status(lone_watcher)
    assert (shown["rollout"]["next_decision"]["action"], shown["rollout"]["next_decision"]["reason"]) == expected
    latest = shown["history"][0]
    assert (latest["kind"], latest["version"], latest["reason"], latest["trigger"]) == (
        "rollout_command",
        "2",
        action,
        "POST /rollout",
    )


def test_rollout_command_repeated_is_202_and_recorded_once(lone_watcher: dict, db) -> None:
    store_state(db, lone_watcher["name"], DeploymentState(rollout=baking_rollout()))
    before = len(status(lone_watcher)["history"])

    answers = [call(rollout_url(lone_watcher), {"action": "abort"}) for _ in range(2)]

    assert [answer.status for answer in answers] == [202, 202]
    assert len(status(lone_watcher)["history"]) == before + 1


@pytest.mark.parametrize(
    "state",
    [
        DeploymentState(),
        DeploymentState(rollout=dataclasses.replace(baking_rollout(), state=rollout.RolloutStatus.COMPLETED)),
    ],
    ids=["never-a-rollout", "rollout-completed"],
)
def test_rollout_command_with_no_rollout_in_progress_is_409_and_changes_nothing(lone_watcher: dict, db, state) -> None:
    store_state(db, lone_watcher["name"], state)

    answer = call(rollout_url(lone_watcher), {"action": "abort"})

    assert (answer.status, answer.error_code) == (409, "no_rollout")
    assert stored_rollout(db, lone_watcher["name"]) == state.rollout


def test_rollout_complete_while_an_abort_is_pending_is_409(lone_watcher: dict, db) -> None:
    pending = baking_rollout(RolloutCommand(rollout.Command.ABORT, AT, "POST /rollout"))
    store_state(db, lone_watcher["name"], DeploymentState(rollout=pending))

    answer = call(rollout_url(lone_watcher), {"action": "complete"})

    assert (answer.status, answer.error_code) == (409, "abort_pending")
    assert stored_rollout(db, lone_watcher["name"]).command.command == "abort"


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        ({"action": "pause"}, 400, "invalid_action"),
        ({"action": "ABORT"}, 400, "invalid_action"),
        ({"action": 1}, 400, "invalid_type"),
        ({}, 400, "missing_field"),
        ({"action": "abort", "force": True}, 400, "unknown_field"),
        (b'"abort"', 400, "invalid_json"),
        (b"{not json", 400, "invalid_json"),
        (b'{"action": "abort", "action": "complete"}', 400, "invalid_json"),
    ],
    ids=[
        "unknown-action",
        "wrong-case",
        "not-a-string",
        "no-action",
        "extra-field",
        "not-an-object",
        "not-json",
        "dup",
    ],
)
def test_rollout_command_malformed_is_400_and_changes_nothing(lone_watcher: dict, db, body, status_code, code) -> None:
    store_state(db, lone_watcher["name"], DeploymentState(rollout=baking_rollout()))
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    answer = call(rollout_url(lone_watcher), raw=raw, headers={"Content-Type": "application/json"})

    assert (answer.status, answer.error_code) == (status_code, code)
    assert stored_rollout(db, lone_watcher["name"]) == baking_rollout()


def test_rollout_command_not_json_is_415(lone_watcher: dict) -> None:
    answer = call(rollout_url(lone_watcher), raw=b"action=abort", headers={"Content-Type": "text/plain"})

    assert (answer.status, answer.error_code) == (415, "unsupported_media_type")


def test_webhook_receiver_deployment_serves_only_the_webhook(firestore_emulator, tmp_path_factory) -> None:
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{services.free_port()}",
        "MLFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SERVING_BUCKET": "never-used",
        "EVAL_SET_URI": "gs://never-used/eval.jsonl",
        "WEBHOOK_RECEIVER_ONLY": "true",
    }
    workdir = tmp_path_factory.mktemp("webhook-only")
    with services.start_function("registry_watcher", workdir, env, ready_any_status=True) as receiver:
        rollout_answer = call(f"{receiver.url}/rollout", {"action": "abort"})
        status_answer = call(f"{receiver.url}/status")
        unsigned = call(f"{receiver.url}/webhook", {"entity": "model_version_alias"})

    assert (rollout_answer.status, status_answer.status) == (404, 404)
    assert (unsigned.status, unsigned.error_code) == (401, "invalid_signature")
