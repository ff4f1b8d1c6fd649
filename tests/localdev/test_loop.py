"""The whole loop on the local stack (`python -m localdev.stack up`), end to end, and its faults.

Train v1 -> promote -> v1 serves -> predictions and feedback -> train v2 -> the alias moved by the REST call the
MLflow UI makes -> v2 serves while a client keeps sending requests -> statistics per version -> roll back.
`make down` then `make up` keeps every prediction, answer and decision.

One stack for the module; each test gets what it needs from fixtures (two trained versions, one serving), not
from the tests before it, so any test runs alone too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from localdev import services
from tests.functions.conftest import call
from tests.functions.watcher_support import Versions
from tests.localdev.stack_support import (
    Load,
    local_stack_pids,
    promote_as_the_ui_does,
    running_stack,
    serving_version,
    stack_command,
    train,
    wait_for_version,
    watcher_status,
)

# Deadlines for "it happens", not figures: bench/promotion.py measures how fast (about 2 s here).
SERVE_WITHIN_S = 60.0
# A tick with MLflow frozen must fail (503) rather than hang; the watcher's own timeout is 2 s.
HANG_S = 30.0


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory) -> Iterator[dict]:
    # Immediate switches: this module is about one version replacing another (rollouts: test_rollout_loop).
    with running_stack(tmp_path_factory.mktemp("stack"), {"ROLLOUT_STEPS": "100"}) as stack:
        yield stack


@pytest.fixture(scope="module")
def versions(local_stack: dict) -> tuple[str, str]:
    """Two quick models registered as versions of yelp-sentiment (nothing promoted by this fixture)."""
    return train(local_stack["urls"], local_stack["env"], seed=1), train(
        local_stack["urls"], local_stack["env"], seed=2
    )


@pytest.fixture
def serving(local_stack: dict, versions: tuple[str, str]) -> str:
    """A version serving on predict: the one serving already, else the first promoted now."""
    urls = local_stack["urls"]
    current = serving_version(urls)
    if current is None:
        promote_as_the_ui_does(urls, versions[0])
        wait_for_version(urls, versions[0], SERVE_WITHIN_S)
        current = versions[0]
    return current


def test_stack_writes_the_contract_urls_and_up_again_starts_nothing(local_stack: dict) -> None:
    urls = local_stack["urls"]

    again = stack_command("up", local_stack["env"])
    config = call(f"{urls['frontend']}/config.json").json

    assert sorted(urls) == [
        "data_bucket",
        "feedback",
        "frontend",
        "mlflow",
        "predict",
        "registry_watcher",
        "retrain",
        "storage_emulator",
    ]
    assert urls["data_bucket"] == "gs://training-data/yelp-sentiment/"
    assert call(f"{urls['storage_emulator']}/storage/v1/b/training-data").status == 200
    assert call(f"{urls['retrain']}/status").status == 200
    assert again.returncode == 0, again.stderr
    assert json.loads((local_stack["state"] / "pids.json").read_text()) == local_stack["pids"]
    assert config == {"predict_url": urls["predict"], "feedback_url": urls["feedback"], "prediction_retention_days": 30}
    assert call(f"{urls['mlflow']}/health").status == 200
    assert call(f"{urls['feedback']}/statistics").status == 200
    assert call(f"{urls['feedback']}/predictions").status == 200  # the demo opts in to listing (PREDICTIONS_LISTING)
    assert call(f"{urls['registry_watcher']}/status").status == 200
    assert local_stack["fresh_predict"] == "no_revision"  # nothing promoted yet


def test_whole_loop_train_promote_switch_under_load_statistics_and_rollback(local_stack: dict, versions) -> None:
    urls = local_stack["urls"]
    v1, v2 = versions
    before = call(f"{urls['feedback']}/statistics").json["statistics"]
    promote_as_the_ui_does(urls, v1)
    wait_for_version(urls, v1, SERVE_WITHIN_S)
    # The page's origin gets CORS through the router, as the browser needs it.
    preflight = call(
        urls["predict"],
        method="OPTIONS",
        headers={
            "Origin": urls["frontend"],
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == urls["frontend"]
    page = call(f"{urls['frontend']}/")
    assert page.status == 200
    assert b"<title>Review sentiment</title>" in page.raw

    made: Counter = Counter()
    answered: Counter = Counter()
    for i, text in enumerate(["lovely place", "awful service, cold food", "great pizza", "never again"]):
        prediction = call(urls["predict"], {"text": text})
        assert prediction.status == 201
        made[prediction.json["details"]["model_version"]] += 1
        if i % 2 == 0:
            body = {
                "prediction_id": prediction.json["id"],
                "is_positive_user_answered": i == 0,
                "feedback_token": prediction.json["feedback_token"],
            }
            assert call(urls["feedback"], body).status == 200
            answered[prediction.json["details"]["model_version"]] += 1

    with Load(urls["predict"]) as load:
        time.sleep(1.0)
        promote_as_the_ui_does(urls, v2)
        took = wait_for_version(urls, v2, SERVE_WITHIN_S)
        time.sleep(1.0)

    print(f"\nv2 serving {took:.2f} s after the alias was set; {len(load.answers)} requests at {load.rate:.1f}/s")
    assert Counter(status for status, _, _ in load.answers) == Counter({201: len(load.answers)})
    assert {version for _, version, _ in load.answers} == {v1, v2}
    made.update(version for _, version, _ in load.answers)

    statistics = call(f"{urls['feedback']}/statistics").json["statistics"]
    by_version = statistics["by_model_version"]
    earlier = before["by_model_version"]

    def added(version: str, field: str) -> int:
        return by_version.get(version, {}).get(field, 0) - earlier.get(version, {}).get(field, 0)

    assert {v: added(v, "predictions") for v in by_version if added(v, "predictions")} == dict(made)
    assert added(v1, "feedback") == answered[v1] == 2
    assert added(v1, "correct") == 1  # "lovely place" answered positive, "great pizza" answered negative
    assert statistics["predictions"] - before["predictions"] == sum(made.values())

    promote_as_the_ui_does(urls, v1)
    wait_for_version(urls, v1, SERVE_WITHIN_S)
    deadline = time.monotonic() + 10  # the consumer records the rollback once the switch is done
    while not any(e["kind"] == "rolled_back" and e["version"] == v1 for e in watcher_status(urls)["history"]):
        assert time.monotonic() < deadline, watcher_status(urls)["history"][:5]
        time.sleep(0.2)


def internal(local_stack: dict) -> dict:
    return json.loads((local_stack["state"] / "internal.json").read_text())


def stored_prediction(local_stack: dict, prediction_id: str) -> bool:
    """Whether the prediction is in Firestore, read through the emulator's REST API (not the code under test)."""
    host = internal(local_stack)["FIRESTORE_EMULATOR_HOST"]
    url = f"http://{host}/v1/projects/demo-local/databases/(default)/documents/predictions/{prediction_id}"
    return call(url, headers={"Authorization": "Bearer owner"}).status == 200


def test_frozen_firestore_mid_load_loses_nothing_acknowledged(local_stack: dict, serving: str) -> None:
    urls, firestore_pid = local_stack["urls"], int(local_stack["pids"]["firestore"])
    with Load(urls["predict"]) as load:
        time.sleep(1.0)
        with services.frozen(firestore_pid):
            time.sleep(4.0)
        time.sleep(2.0)

    statuses = Counter(status for status, _, _ in load.answers)
    assert set(statuses) <= {201, 503}
    assert statuses[503] > 0  # the freeze was felt
    acknowledged = [pid for status, _, pid in load.answers if status == 201]
    assert [pid for pid in acknowledged if not stored_prediction(local_stack, pid)] == []


def test_duplicated_pubsub_message_redeploys_nothing(local_stack: dict, serving: str, monkeypatch) -> None:
    from google.cloud import pubsub_v1

    urls, hosts = local_stack["urls"], internal(local_stack)
    status = watcher_status(urls)
    target, serving = status["target"], status["serving"]
    revision = call(f"{hosts['router_admin']}/revisions").json["revision"]
    event = {
        "event_id": target["event_id"],
        "model_name": "yelp-sentiment",
        "model_version": target["version"],
        "mlflow_run_id": target["run_id"],
        "model_uri": target["model_uri"],
        "sha256": target["sha256"],
        "previous_version": None,
    }
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", hosts["PUBSUB_EMULATOR_HOST"])
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path("demo-local", hosts["topic"])
    for _ in range(2):
        publisher.publish(
            topic, json.dumps(event).encode(), model_name="yelp-sentiment", model_version=target["version"]
        ).result(timeout=10)

    consumer_logs = sorted((local_stack["state"] / "logs").glob("on_production_changed-*.log"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [line for log in consumer_logs for line in log.read_text().splitlines() if target["event_id"] in line]
        if sum("already_serving" in line for line in lines) >= 2:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the consumer did not acknowledge both duplicates")
    assert call(f"{hosts['router_admin']}/revisions").json["revision"] == revision
    assert watcher_status(urls)["serving"] == serving


def other_version(urls: dict, serving: str) -> str:
    from mlflow import MlflowClient

    versions = MlflowClient(urls["mlflow"]).search_model_versions("name='yelp-sentiment'")
    return next(str(v.version) for v in versions if str(v.version) != serving and v.run_id)


def test_mlflow_stopped_during_a_tick_then_started_the_loop_catches_up(local_stack: dict, serving: str) -> None:
    from mlflow import MlflowClient

    urls, mlflow_pid = local_stack["urls"], int(local_stack["pids"]["mlflow"])
    client = MlflowClient(urls["mlflow"])
    (hook,) = [h for h in client.list_webhooks() if h.name == "registry-watcher-local"]
    serving = serving_version(urls)
    wanted = other_version(urls, serving)
    client.update_webhook(hook.webhook_id, status="DISABLED")  # so only ticks can notice the move
    try:
        time.sleep(1.1)  # the server's webhook cache
        promote_as_the_ui_does(urls, wanted)
        with services.frozen(mlflow_pid):
            failed = call(urls["registry_watcher"], {}, timeout=HANG_S)
        assert (failed.status, failed.error_code) == (503, "registry_unavailable")
        assert serving_version(urls) == serving

        caught_up = call(urls["registry_watcher"], {}, timeout=60)
        assert caught_up.status == 200
        wait_for_version(urls, wanted, SERVE_WITHIN_S)
    finally:
        client.update_webhook(hook.webhook_id, status="ACTIVE")


def test_corrupt_model_promoted_is_refused_and_the_old_version_keeps_serving(local_stack: dict, serving: str) -> None:
    urls = local_stack["urls"]
    serving = serving_version(urls)
    bad = Versions(urls["mlflow"]).add_variant("yelp-sentiment", model_bytes=b"\x08\x07 not an onnx model")

    promote_as_the_ui_does(urls, bad)
    deadline = time.monotonic() + 30
    while (watcher_status(urls)["refused"] or {}).get("version") != bad:
        assert time.monotonic() < deadline, watcher_status(urls)
        time.sleep(0.2)

    refused = watcher_status(urls)["refused"]
    assert refused["reason"] == "model_invalid"
    assert serving_version(urls) == serving
    assert call(urls["predict"], {"text": "still serving"}).status == 201


def test_down_then_up_keeps_predictions_feedback_statistics_and_deployments(local_stack: dict, serving: str) -> None:
    urls, state = local_stack["urls"], local_stack["state"]
    for i in range(5):
        prediction = call(urls["predict"], {"text": f"restart review {i}: the soup was lovely"})
        assert prediction.status == 201
        body = {
            "prediction_id": prediction.json["id"],
            "is_positive_user_answered": i % 2 == 0,
            "feedback_token": prediction.json["feedback_token"],
        }
        assert call(urls["feedback"], body).status == 200
    statistics = call(f"{urls['feedback']}/statistics").json
    recent = call(f"{urls['feedback']}/predictions?limit=100").json
    history = watcher_status(urls)["history"]

    down = stack_command("down", local_stack["env"])
    up = stack_command("up", local_stack["env"])
    assert down.returncode == 0, down.stderr
    assert up.returncode == 0, up.stdout + up.stderr
    urls = json.loads((state / "stack.json").read_text())
    local_stack.update(urls=urls, pids=local_stack_pids(state))  # new processes (and ports) for the next tests

    assert serving_version(urls) == serving  # the router starts on the version the restored state serves
    assert call(f"{urls['feedback']}/statistics").json == statistics
    assert call(f"{urls['feedback']}/predictions?limit=100").json == recent
    kept = watcher_status(urls)["history"]
    assert [entry for entry in history if entry not in kept] == []
    assert call(urls["predict"], {"text": "after the restart"}).status == 201
