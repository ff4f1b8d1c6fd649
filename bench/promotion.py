"""Promotion latency: the alias `production` set in MLflow -> the event on `model-production-changed`.

    .venv/bin/python bench/promotion.py [--promotions 5]

Real servers, one run: an MLflow server (with its registry webhooks), the Firestore, Pub/Sub and GCS emulators,
and `registry_watcher` under functions-framework. A small model is trained and registered, copied into more
versions, then promoted in turn:
- via webhook: MLflow calls the watcher the moment the alias moves (target: median <= 5 s);
- via tick: the webhook removed, a scheduler tick sent right after the alias moves (the processing time; with
  Cloud Scheduler's one-minute interval a lost webhook adds at most that minute).
Baseline, same run: publish -> pull on the same topic (the floor Pub/Sub alone sets).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from _common import REPO_ROOT

from localdev import services

PROJECT = "demo-bench"
logging.getLogger("mlflow").setLevel(logging.WARNING)  # one line per version created is noise here
SECRET = "bench-webhook-secret-0123456789"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=5, help="promotions per path (at least 5)")
    args = parser.parse_args()
    promotions = max(5, args.promotions)
    workdir = Path(tempfile.mkdtemp(prefix="bench-promotion-"))
    print(f"servers and logs in {workdir}", flush=True)
    with (
        services.start_mlflow(workdir / "mlflow") as mlflow_server,
        services.start_firestore_emulator(workdir) as firestore,
        services.start_pubsub_emulator(workdir, PROJECT) as pubsub,
        services.start_gcs_emulator(workdir) as gcs,
    ):
        emulators = {
            "FIRESTORE_EMULATOR_HOST": firestore.url,
            "PUBSUB_EMULATOR_HOST": pubsub.url,
            "STORAGE_EMULATOR_HOST": gcs.url,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
        os.environ.update(emulators)  # this process's clients talk to the emulators too
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import pubsub_v1, storage
        from mlflow import MlflowClient

        name = "bench-" + uuid.uuid4().hex[:6]
        print("training a small model and registering it (about 20 s) ...", flush=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "training.train", "--quiet", "--limit", "20000", "--epochs", "2"),
                *("--tracking-uri", mlflow_server.url, "--register", "--output-dir", str(workdir / "model")),
            ],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        eval_set = workdir / "eval.jsonl"  # the deploy gate's own evaluation set (training/eval_set.py)
        subprocess.run(
            [sys.executable, "-m", "training.eval_set", "--output", str(eval_set)],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        client = MlflowClient(mlflow_server.url)
        base = client.get_model_version(
            "yelp-sentiment", max(int(v.version) for v in client.search_model_versions("name='yelp-sentiment'"))
        )
        client.create_registered_model(name)
        model_id = base.source.removeprefix("models:/") if base.source.startswith("models:/m-") else None
        versions = [
            str(client.create_model_version(name, base.source, base.run_id, model_id=model_id).version)
            for _ in range(2 * promotions)
        ]

        bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket("bench-serving")
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(PROJECT, "model-production-changed")
        publisher.create_topic(name=topic)
        audit = subscriber.subscription_path(PROJECT, "bench-audit")
        subscriber.create_subscription(request={"name": audit, "topic": topic})

        env = {
            **emulators,
            "MODEL_NAME": name,
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "MLFLOW_WEBHOOK_SECRET": SECRET,
            "SERVING_BUCKET": bucket.name,
            "PUBSUB_TOPIC": topic,
            "MIN_VALIDATION_ACCURACY": "0.5",
            "EVAL_SET_URI": f"file://{eval_set}",
            "ROLLOUT_STEPS": "100",  # the immediate switch is what this bench times
        }
        with services.start_function("registry_watcher", workdir, env, ready_path="/status") as watcher:
            hook = client.create_webhook(
                name="bench", url=f"{watcher.url}/webhook", events=["model_version_alias.created"], secret=SECRET
            )
            time.sleep(1.1)  # the MLflow server's webhook cache (1 s in localdev)

            def wait_for_event(version: str, started: float) -> float:
                while time.monotonic() - started < 120:
                    response = subscriber.pull(request={"subscription": audit, "max_messages": 10}, timeout=5)
                    ack = [m.ack_id for m in response.received_messages]
                    if ack:
                        subscriber.acknowledge(request={"subscription": audit, "ack_ids": ack})
                    if any(json.loads(m.message.data)["model_version"] == version for m in response.received_messages):
                        return time.monotonic() - started
                raise SystemExit(f"no event for version {version} within 120 s; see {watcher.log_path}")

            via_webhook = []
            for version in versions[:promotions]:
                started = time.monotonic()
                client.set_registered_model_alias(name, "production", version)
                via_webhook.append(wait_for_event(version, started))
                print(f"  webhook: version {version} published after {via_webhook[-1]:.2f} s", flush=True)

            client.delete_webhook(hook.webhook_id)
            time.sleep(1.1)
            via_tick = []
            for version in versions[promotions:]:
                started = time.monotonic()
                client.set_registered_model_alias(name, "production", version)
                request = urllib.request.Request(watcher.url, data=b"{}", headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=30).close()
                via_tick.append(wait_for_event(version, started))
                print(f"  tick:    version {version} published after {via_tick[-1]:.2f} s", flush=True)

            floor = []
            for _ in range(promotions):
                started = time.monotonic()
                publisher.publish(topic, json.dumps({"model_version": "baseline"}).encode()).result(timeout=10)
                floor.append(wait_for_event("baseline", started))

    webhook_median, tick_median, floor_median = (statistics.median(x) for x in (via_webhook, via_tick, floor))
    print()
    print(f"alias set -> event published, over {promotions} promotions each:")
    print(
        f"  via webhook      median {webhook_median:6.2f} s  max {max(via_webhook):6.2f} s  (target <= 5 s: "
        f"{'met' if webhook_median <= 5 else 'NOT MET'})"
    )
    print(
        f"  via tick         median {tick_median:6.2f} s  max {max(via_tick):6.2f} s  (+ up to 60 s of "
        "scheduler interval when the webhook is lost)"
    )
    print(f"  baseline publish->pull median {floor_median:6.3f} s")
    print(
        f"  ratios: webhook / baseline {webhook_median / floor_median:.1f}x, tick / webhook "
        f"{tick_median / webhook_median:.2f}, webhook / target {webhook_median / 5:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
