"""`python -m localdev.stack up|down|reset|status|url NAME`: the whole loop on one machine, with real servers.

`up` starts, each in its own process group and polled until ready: the Firestore, Pub/Sub and GCS emulators
(buckets created), an MLflow server with its UI (SQLite store, artifacts in the GCS emulator's bucket, webhooks
to the watcher signed with a secret), `predict` behind the local router (a stable URL whose revisions the
watcher switches), `feedback`, `registry_watcher`, the redeploy (`functions/redeploy`, its own process fed by a
Pub/Sub push subscription with a dead-letter topic), the retrain check (`functions/retrain`; its training runs
are child processes of the work tree), a scheduler that ticks the watcher every minute and the retrain check
every LOCAL_RETRAIN_INTERVAL_S (60; 0: only `make retrain`), and the static page with its config.json. Each
function gets only its own settings, as in the cloud. URLs go to .local/stack.json (keys mlflow, predict,
feedback, registry_watcher, frontend, data_bucket, storage_emulator, retrain), logs to .local/logs/.
`down` exports the Firestore emulator's data to .local/firestore/ (`up` imports it) and stops every process the
stack started; `reset` also deletes .local/.

Ports: LOCAL_PORT_MLFLOW (5000), LOCAL_PORT_PREDICT (8080), LOCAL_PORT_FEEDBACK (8081),
LOCAL_PORT_REGISTRY_WATCHER (8082), LOCAL_PORT_FRONTEND (8000); 0 picks a free port. LOCAL_TICK_INTERVAL_S
(60) is the scheduler's interval, LOCAL_MIN_VALIDATION_ACCURACY (0.8) the deploy gate's minimum,
PREDICTION_RETENTION_DAYS (30) predict's retention, which the page states. feedback lists predictions
(PREDICTIONS_LISTING=on: one person's machine). ROLLOUT_*, DRIFT_*, MAX_CALIBRATION_ERROR,
MIN_BEHAVIOUR_PASS_RATE, MIN_EVAL_ACCURACY and MAX_EVAL_REGRESSION are passed to the watcher as they are (DRIFT_*
to feedback too); the watcher's evaluation set is staged at `up` in the GCS emulator's bucket `eval-sets` from the
data's test split. Unset, the stack's own rollout defaults (LOCAL_ROLLOUT) make a promotion watchable in a minute:
half the traffic, then all of it after 30 s unless the live evidence says the new version is worse.
EVIDENCE_MAX_PER_CLIENT is passed to predict and feedback as it is (both record answers). A client is its
address, as in the cloud: predict's router appends it to X-Forwarded-For the way the load balancer does
(CLIENT_ADDRESS_HOPS 2, the default), feedback is reached directly and takes the peer (CLIENT_ADDRESS_HOPS 0);
many clients are many loopback addresses (127.0.0.2, 127.0.0.3, ... on Linux), see docs/promotion.md.
The data bucket (`training-data`, prefix `yelp-sentiment/`) holds the default data, the out-of-domain sets and the
evaluation texts' hashes, staged at `up` when absent; RETRAIN_*, FEEDBACK_EXPORT_*, AUTO_PROMOTE and
TRAINING_IMAGE are passed to the retrain check as they are, over the stack's own defaults (LOCAL_RETRAIN), see
docs/retraining.md.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localdev import services, website
from sentiment_core.contract import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
# The progressive rollout on one machine: no feedback is required to advance (nobody may be answering), so a
# promotion completes after the bake time unless a check fails; a person's feedback still counts as evidence.
LOCAL_ROLLOUT = {"ROLLOUT_STEPS": "50,100", "ROLLOUT_BAKE_S": "30", "ROLLOUT_MIN_FEEDBACK": "0"}
# LOCAL_STACK_DIR moves the stack's state (tests use a temporary folder); .local/ by default.
LOCAL_DIR = Path(os.environ.get("LOCAL_STACK_DIR", REPO_ROOT / ".local"))
STACK_FILE = LOCAL_DIR / "stack.json"
PIDS_FILE = LOCAL_DIR / "pids.json"
INTERNAL_FILE = LOCAL_DIR / "internal.json"
SECRETS_FILE = LOCAL_DIR / "secrets.json"
PORTS_FILE = LOCAL_DIR / "ports.json"  # ports kept across restarts (_gcs_port)
LOGS = LOCAL_DIR / "logs"
# The Firestore emulator keeps its data in memory: `down` (and the scheduler, every tick) exports it here and
# `up` imports it, so predictions, feedback and the deployment history outlive a restart.
FIRESTORE_EXPORT = LOCAL_DIR / "firestore"

PROJECT = "demo-local"
ARTIFACTS_BUCKET = "mlflow-artifacts"
SERVING_BUCKET = "serving-models"
# The deploy gate's own evaluation set, in a bucket of its own as in the cloud (only the watcher reads it; no
# training identity writes it): staged at `up` from the data's test split (training/eval_set.py).
EVAL_BUCKET = "eval-sets"
EVAL_OBJECT = f"{MODEL_NAME}/eval.jsonl"
# The training data, as in the cloud's data bucket (docs/retraining.md): the default data, the out-of-domain sets
# and the evaluation set's text hashes, staged at `up` when absent; the retrain check exports feedback beside them.
DATA_BUCKET = "training-data"
DATA_PREFIX = f"{MODEL_NAME}/"
DATA_URI = f"gs://{DATA_BUCKET}/{DATA_PREFIX}"
HOLDOUT_OBJECT = f"{DATA_PREFIX}holdout/eval-set.sha256"
# Continuous training on one machine: a change of the data is trained on a minute after the last start, and a
# few answers are enough to export (a person trying it out gives tens, not hundreds). Each can be overridden.
LOCAL_RETRAIN = {"RETRAIN_MIN_INTERVAL_S": "60", "RETRAIN_MIN_FEEDBACK": "10", "FEEDBACK_EXPORT_INTERVAL_S": "300"}
TOPIC = "model-production-changed"
DEAD_LETTER_TOPIC = "model-production-changed-dead-letter"
MAX_DELIVERY_ATTEMPTS = 5
PUBLIC = {"mlflow": 5000, "predict": 8080, "feedback": 8081, "registry_watcher": 8082, "frontend": 8000}
WEBHOOK_NAME = "registry-watcher-local"


class StackError(RuntimeError):
    """The stack cannot start as configured (a port taken, a server that does not come up)."""


def ports() -> dict[str, int]:
    """The public ports, from LOCAL_PORT_<NAME> or the defaults; 0 means any free port."""
    chosen = {}
    for name, default in PUBLIC.items():
        variable = f"LOCAL_PORT_{name.upper()}"
        raw = os.environ.get(variable, str(default))
        try:
            port = int(raw)
        except ValueError as exc:
            raise StackError(f"{variable} must be a port number, got {raw!r}") from exc
        chosen[name] = port or services.free_port()
    taken = [
        f"{port} ({name}, {f'LOCAL_PORT_{name.upper()}'})" for name, port in chosen.items() if not _port_free(port)
    ]
    if taken:
        raise StackError(
            f"port {', '.join(taken)} already in use: stop what uses it (`make down` if it is an old stack) or "
            "choose another port with the variable named"
        )
    return chosen


def retrain_interval() -> str:
    """LOCAL_RETRAIN_INTERVAL_S: seconds between two ticks of the retrain check (60); 0 leaves it to `make
    retrain` (the tests of other loops, whose own trainings must not start more)."""
    raw = os.environ.get("LOCAL_RETRAIN_INTERVAL_S", "60")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise StackError(f"LOCAL_RETRAIN_INTERVAL_S must be a number of seconds from 0 to 86400, got {raw!r}")
    return raw


def retention_days() -> int:
    """PREDICTION_RETENTION_DAYS for predict and the page (how long a review is kept), predict's default 30."""
    raw = os.environ.get("PREDICTION_RETENTION_DAYS", "30")
    if not re.fullmatch(r"[1-9][0-9]{0,3}", raw) or int(raw) > 3650:
        raise StackError(f"PREDICTION_RETENTION_DAYS must be a whole number of days from 1 to 3650, got {raw!r}")
    return int(raw)


def up() -> dict[str, str]:
    """Start the stack unless it runs already; the public URLs."""
    pids = _read(PIDS_FILE)
    if pids and all(services.alive(int(pid)) for pid in pids.values()):
        return _read(STACK_FILE)
    if pids:
        down()  # half a stack (a crash, a reboot): start clean
    port = ports()
    retention_days()  # malformed settings fail here, before anything starts
    retrain_interval()
    started: dict[str, int] = {}

    def keep(service: services.Service) -> None:
        # Written as each one starts: if `up` dies half-way, `down` (or the next `up`) still finds them all.
        if service.name in started:
            raise StackError(f"two services named {service.name}")
        started[service.name] = service.pid
        _write(PIDS_FILE, started)

    try:
        urls = _start_all(port, keep)
    except BaseException:
        down(force=True)  # nothing was written since the import: the export on disk is still the data
        raise
    _write(STACK_FILE, urls)
    return urls


def _start_all(port: dict[str, int], keep: Callable[[services.Service], None]) -> dict[str, str]:
    LOGS.mkdir(parents=True, exist_ok=True)
    secret = _secrets()
    retention = retention_days()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        firestore, pubsub, gcs = (
            future.result()
            for future in [
                pool.submit(services.start_firestore_emulator, LOGS, None, _saved_firestore()),
                pool.submit(services.start_pubsub_emulator, LOGS, PROJECT),
                pool.submit(services.start_gcs_emulator, LOGS, _gcs_port(), LOCAL_DIR / "gcs"),
            ]
        )
    for service in (firestore, pubsub, gcs):
        keep(service)
    emulators = {
        "FIRESTORE_EMULATOR_HOST": firestore.url,
        "PUBSUB_EMULATOR_HOST": pubsub.url,
        "STORAGE_EMULATOR_HOST": gcs.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    with _environment(emulators):
        _create_buckets()
        _stage_eval_set()
        _stage_training_data()
    # Without a fixed key MLflow encrypts webhook secrets with a key of the process: after a restart it cannot
    # read the webhooks it stored, and listing them fails with a 500.
    mlflow_env = {**emulators, "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": secret["mlflow_webhook_encryption_key"]}
    mlflow = services.start_mlflow(
        LOCAL_DIR / "mlflow", port["mlflow"], env=mlflow_env, artifacts_destination=f"gs://{ARTIFACTS_BUCKET}"
    )
    keep(mlflow)
    urls = {name: f"http://127.0.0.1:{p}" for name, p in port.items()}
    public_env = {
        **emulators,
        "FEEDBACK_TOKEN_SECRET": secret["feedback_token"],
        "ALLOWED_ORIGINS": f"{urls['frontend']},http://localhost:{port['frontend']}",
        **_passed_through("EVIDENCE_MAX_PER_CLIENT"),
    }
    # The restored deployment state says which version serves: the watcher will not redeploy what it already
    # deployed, so the router starts on it (the staged files outlive the restart in the GCS emulator's folder).
    serving = _serving_version(firestore.url)
    _forget_canary(firestore.url)
    # How long predict keeps a review (its expire_at) and what the page says: the same number.
    router, router_admin = services.start_router(
        LOGS / "predict",
        {**public_env, "PREDICTION_RETENTION_DAYS": str(retention)},
        port=port["predict"],
        model_uri=serving and serving["model_uri"],
        model_version=serving and serving["version"],
        model_sha256=serving and serving.get("sha256"),
    )
    keep(router)
    consumer_port = services.free_port()
    watcher_env = {
        **emulators,
        "MLFLOW_TRACKING_URI": mlflow.url,
        "MLFLOW_WEBHOOK_SECRET": secret["webhook"],
        "SERVING_BUCKET": SERVING_BUCKET,
        "PUBSUB_TOPIC": TOPIC,
        "MIN_VALIDATION_ACCURACY": os.environ.get("LOCAL_MIN_VALIDATION_ACCURACY", "0.8"),
        "EVAL_SET_URI": f"gs://{EVAL_BUCKET}/{EVAL_OBJECT}",
        **LOCAL_ROLLOUT,
        **_passed_through(
            "ROLLOUT_",
            "DRIFT_",
            "MAX_CALIBRATION_ERROR",
            "MIN_BEHAVIOUR_PASS_RATE",
            "MIN_EVAL_ACCURACY",
            "MAX_EVAL_REGRESSION",
        ),
    }
    redeploy_env = {
        "FIRESTORE_EMULATOR_HOST": firestore.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "DEPLOYER": "local",
        "SERVING_BUCKET": SERVING_BUCKET,  # the GCS emulator's bucket the watcher stages into: nothing else deploys
        "LOCAL_ROUTER_URL": router_admin,
        "LOCAL_PREDICT_URL": urls["predict"],
    }
    retrain_port = services.free_port()
    retrain_env = {
        **emulators,
        "MLFLOW_TRACKING_URI": mlflow.url,
        "DATA_URI": DATA_URI,
        # Training runs here as a child of the check, from the work tree: the same entry point as the cloud's job.
        "RETRAIN_RUNNER": "local",
        "LOCAL_TRAINING_DIR": str(LOGS / "training"),
        "LOCAL_TRAINING_CWD": str(REPO_ROOT),
        **LOCAL_RETRAIN,
        **_passed_through("RETRAIN_", "FEEDBACK_EXPORT_", "AUTO_PROMOTE", "TRAINING_IMAGE", "EVIDENCE_MAX_PER_CLIENT"),
    }
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(
                services.start_function,
                "retrain",
                LOGS,
                retrain_env,
                port=retrain_port,
                target="retrain_check",
                ready_path="/status",
            ),
            pool.submit(
                services.start_function,
                "feedback",
                LOGS,
                # The demo lists everyone's predictions (the stack is one person's machine): an explicit opt-in,
                # off in the cloud's public deployment (docs/architecture.md). Reached directly here, with no
                # proxy in front: its X-Forwarded-For would be the client's own, so the peer is the client.
                {**public_env, "PREDICTIONS_LISTING": "on", "CLIENT_ADDRESS_HOPS": "0"},
                port=port["feedback"],
                ready_path="/statistics",
            ),
            pool.submit(
                services.start_function,
                "registry_watcher",
                LOGS,
                watcher_env,
                port=port["registry_watcher"],
                ready_path="/status",
            ),
            pool.submit(
                services.start_function,
                "redeploy",
                LOGS,
                redeploy_env,
                port=consumer_port,
                target="on_production_changed",
                ready_any_status=True,
            ),
        ]
        errors = []
        for future in futures:
            try:
                keep(future.result())
            except services.ServiceError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
    consumer_url = f"http://127.0.0.1:{consumer_port}"
    with _environment(emulators):
        _create_topics(consumer_url)
    _register_webhook(mlflow.url, f"{urls['registry_watcher']}/webhook", secret["webhook"])
    urls |= {
        "retrain": f"http://127.0.0.1:{retrain_port}",
        "data_bucket": DATA_URI,
        "storage_emulator": gcs.url,
    }
    interval = os.environ.get("LOCAL_TICK_INTERVAL_S", "60")
    keep(
        services.launch(
            "scheduler",
            [
                *[
                    sys.executable,
                    "-m",
                    "localdev.scheduler",
                    "--url",
                    urls["registry_watcher"],
                    "--interval",
                    interval,
                ],
                *["--firestore", firestore.url, "--project", PROJECT, "--export-to", str(FIRESTORE_EXPORT)],
                *["--retrain-url", urls["retrain"], "--retrain-interval", retrain_interval()],
            ],
            url="",
            log_path=LOGS / "scheduler.log",
            env={"PYTHONPATH": str(REPO_ROOT)},
        )
    )
    keep(_start_frontend(port["frontend"], urls, retention))
    _write(INTERNAL_FILE, {**emulators, "router_admin": router_admin, "consumer": consumer_url, "topic": TOPIC})
    return urls


def _gcs_port() -> int:
    """The GCS emulator's port, the same across `down`/`up` while it is free: the emulator records each object's
    download link (mediaLink) with its address at upload, and clients follow that link, so objects written
    before a restart on another port could not be read (the watcher's evaluation set, the training data)."""
    saved = _read(PORTS_FILE).get("gcs")
    port = saved if isinstance(saved, int) and _port_free(saved) else services.free_port()
    _write(PORTS_FILE, {"gcs": port})
    return port


def _start_frontend(port: int, urls: dict[str, str], retention_days: int) -> services.Service:
    """The page's files as in the site bucket: config.json names the function URLs, the CSP their origins."""
    site = LOCAL_DIR / "site"
    website.build(site, urls["predict"], urls["feedback"], retention_days)
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)]
    return services.start(
        "frontend", argv, url=urls["frontend"], ready_path="/config.json", log_path=LOGS / "frontend.log"
    )


def _create_buckets() -> None:
    from google.api_core import exceptions as gexc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    for name in (ARTIFACTS_BUCKET, SERVING_BUCKET, EVAL_BUCKET, DATA_BUCKET):
        with contextlib.suppress(gexc.Conflict):
            client.create_bucket(name)


def _stage_eval_set() -> None:
    """The watcher's evaluation set, written once: the GCS emulator's folder keeps it across `down`/`up`, and
    the same data gives the same bytes (deterministic sample)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from training import eval_set

    blob = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(EVAL_BUCKET).blob(EVAL_OBJECT)
    if not blob.exists():
        blob.upload_from_string(eval_set.build(), content_type="application/x-ndjson")


def _stage_training_data() -> None:
    """The data bucket as the cloud's starts: the default training data under `yelp/`, the out-of-domain sets
    under `ood/`, and the hashes of the evaluation set's texts under `holdout/` (training drops those texts, so
    a model is never judged on what it learnt). Each object is written only when absent: what a person uploaded
    or replaced since stays, and the GCS emulator's folder keeps all of it across `down`/`up`."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from training import data, eval_set

    bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(DATA_BUCKET)
    files = {
        f"yelp/{p.name}": p for p in sorted(data.DEFAULT_DATA_DIR.glob("*")) if p.name.endswith(data.DATA_SUFFIXES)
    }
    if data.DEFAULT_OOD_DIR.is_dir():
        files |= {f"ood/{p.name}": p for p in sorted(data.DEFAULT_OOD_DIR.glob("*.tsv"))}
    for name, path in files.items():
        blob = bucket.blob(DATA_PREFIX + name)
        if not blob.exists():
            blob.upload_from_filename(str(path))
    holdout = bucket.blob(HOLDOUT_OBJECT)
    if not holdout.exists():
        staged = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).bucket(EVAL_BUCKET)
        hashes = eval_set.text_hashes(staged.blob(EVAL_OBJECT).download_as_bytes())
        holdout.upload_from_string(hashes, content_type="text/plain")


def _create_topics(consumer_url: str) -> None:
    """The topic, its push subscription to the redeploy consumer, and the dead-letter topic with a holding
    subscription (a dead-lettered message is kept there to be read)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, TOPIC)
    dead_letter = publisher.topic_path(PROJECT, DEAD_LETTER_TOPIC)
    for path in (topic, dead_letter):
        with contextlib.suppress(gexc.AlreadyExists):
            publisher.create_topic(name=path)
    subscriptions = [
        {"name": subscriber.subscription_path(PROJECT, f"{DEAD_LETTER_TOPIC}-hold"), "topic": dead_letter},
        {
            "name": subscriber.subscription_path(PROJECT, f"{TOPIC}-redeploy"),
            "topic": topic,
            # The push URL's path names the topic: functions-framework builds the CloudEvent's source from it.
            "push_config": {"push_endpoint": f"{consumer_url}/{topic}"},
            "dead_letter_policy": {"dead_letter_topic": dead_letter, "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS},
            "ack_deadline_seconds": 120,  # a local redeploy takes seconds; no redelivery while it runs
        },
    ]
    for request in subscriptions:
        with contextlib.suppress(gexc.AlreadyExists):
            subscriber.create_subscription(request=request)


def _register_webhook(tracking_uri: str, url: str, secret: str) -> None:
    """One webhook for alias moves, replacing the one a previous `up` registered (its URL or secret may differ)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        hooks = list(client.list_webhooks())
    except MlflowException as exc:
        raise StackError(
            f"MLflow cannot read the webhooks it stored ({exc}); a stack made before the webhook encryption key was "
            f"kept: remove {LOCAL_DIR / 'mlflow'} (registry and runs) and start again"
        ) from exc
    for hook in hooks:
        if hook.name == WEBHOOK_NAME:
            client.delete_webhook(hook.webhook_id)
    client.create_webhook(
        name=WEBHOOK_NAME,
        url=url,
        events=["model_version_alias.created", "model_version_alias.deleted"],
        secret=secret,
    )


def down(force: bool = False, keep_data: bool = True) -> None:
    """Stop every process group the stack started, and the router's revisions; keep the data under .local/.

    Firestore's data is exported first (after the scheduler, whose own exports must not race it). If that fails
    the rest of the stack keeps running, so nothing is lost, unless force. keep_data=False skips the export.
    """
    pids = _read(PIDS_FILE)
    scheduler = pids.pop("scheduler", None)
    if scheduler is not None:
        services.stop(int(scheduler))
        _write(PIDS_FILE, pids)
    firestore_host = _read(INTERNAL_FILE).get("FIRESTORE_EMULATOR_HOST")
    if keep_data and firestore_host and services.alive(int(pids.get("firestore", 0) or 0)):
        try:
            services.export_firestore(firestore_host, PROJECT, FIRESTORE_EXPORT)
        except services.ServiceError as exc:
            if not force:
                raise StackError(
                    f"{exc}; the stack is left running (but its scheduler) so nothing is lost. "
                    "`.venv/bin/python -m localdev.stack down --force` stops it anyway, losing what came after the "
                    "last export"
                ) from exc
    stopping = [int(pid) for pid in pids.values()]
    with concurrent.futures.ThreadPoolExecutor(max(1, len(stopping))) as pool:
        list(pool.map(services.stop, stopping))  # each may take its grace period: together, not one after another
    for pid in _read(LOGS / "predict" / "revisions.json").values():
        services.stop(int(pid))  # left only if the router itself could not stop them
    for pid_file in (LOGS / "training").glob("*.pid"):
        # A training run the retrain check started lives in a process group of its own (it outlives a restart of
        # the check, as a Cloud Run job execution does); the stack stops it with the rest. The check then finds it
        # gone without an exit status and records it failed, to be retried after its backoff.
        pid = int(pid_file.read_text() or 0)
        if not pid_file.with_suffix(".status").exists() and pid_file.stem in _command_line(pid):
            services.stop(pid)  # its wrapper names the execution: a pid reused since is someone else's
    for path in (PIDS_FILE, STACK_FILE, INTERNAL_FILE):
        path.unlink(missing_ok=True)


def reset() -> None:
    """Stop the stack and delete its local state: Firestore's data, the registry, the buckets, secrets, logs."""
    if LOCAL_DIR.resolve() in (Path.home().resolve(), REPO_ROOT, Path("/")) or not _is_stack_dir(LOCAL_DIR):
        raise StackError(f"{LOCAL_DIR} does not look like a local stack's folder: not deleting it")
    down(force=True, keep_data=False)
    shutil.rmtree(LOCAL_DIR, ignore_errors=True)


def _is_stack_dir(folder: Path) -> bool:
    """Absent, empty, or holding only what the stack writes there."""
    known = {"stack.json", "pids.json", "internal.json", "secrets.json", "ports.json", "logs", "mlflow", "gcs"}
    known |= {"site", "models"}
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return all(name in known or name.startswith(FIRESTORE_EXPORT.name) for name in names)


def _saved_firestore() -> Path | None:
    """The newest complete export: a crash while one replaced the other leaves it as .new (or the older as .old)."""
    for suffix in ("", ".new", ".old"):
        folder = FIRESTORE_EXPORT.with_name(FIRESTORE_EXPORT.name + suffix)
        if services.firestore_export_metadata(folder) is not None:
            return folder
    return None


def _serving_version(firestore_host: str) -> dict[str, str] | None:
    """`serving` of the deployment document ({"version", "model_uri", "sha256"}), or None (nothing deployed yet)."""
    url = f"http://{firestore_host}/v1/projects/{PROJECT}/databases/(default)/documents/deployments/{MODEL_NAME}"
    request = urllib.request.Request(url, headers={"Authorization": "Bearer owner"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    fields = document.get("fields", {}).get("serving", {}).get("mapValue", {}).get("fields", {})
    values = {name: fields.get(name, {}).get("stringValue") for name in ("version", "model_uri")}
    if not all(values.values()):
        return None
    # The revision the router starts on checks the file as the redeploy's revisions do (MODEL_SHA256).
    sha256 = fields.get("sha256", {}).get("stringValue")
    return {**values, "sha256": sha256} if sha256 else values


def _forget_canary(firestore_host: str) -> None:
    """The router starts with the serving version only (its revisions do not outlive it, as Cloud Run's would):
    a rollout's candidate recorded as live is cleared, so the redeploy deploys it again when the watcher asks."""
    url = (
        f"http://{firestore_host}/v1/projects/{PROJECT}/databases/(default)/documents/deployments/{MODEL_NAME}"
        "?updateMask.fieldPaths=canary&currentDocument.exists=true"
    )
    body = json.dumps({"fields": {"canary": {"nullValue": None}}}).encode()
    request = urllib.request.Request(
        url, data=body, method="PATCH", headers={"Authorization": "Bearer owner", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 404:  # 404: no deployment document yet (the exists precondition fails)
            raise


def _secrets() -> dict[str, str]:
    """Generated once per .local/ and kept, so tokens handed out before a restart stay valid."""
    values = _read(SECRETS_FILE)
    generators = {
        "feedback_token": lambda: secrets.token_urlsafe(32),
        "webhook": lambda: secrets.token_urlsafe(32),
        "mlflow_webhook_encryption_key": lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),  # Fernet
    }
    missing = {name: make() for name, make in generators.items() if name not in values}
    if missing:
        values.update(missing)
        _write(SECRETS_FILE, values)
        SECRETS_FILE.chmod(0o600)
    return values


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _passed_through(*prefixes: str) -> dict[str, str]:
    """The stack's own environment variables with those prefixes, for the functions that read them."""
    return {name: value for name, value in os.environ.items() if name.startswith(prefixes)}


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") if pid > 1 else ""
    except OSError:
        return ""


def _port_free(port: int) -> bool:
    """Nothing listens there. SO_REUSEADDR as the servers set it: a port left in TIME_WAIT by `down` is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def retrain_now() -> int:
    """One tick of the retrain check now (`make retrain`), its answer in words; 0 unless the check failed."""
    from localdev.scheduler import describe_retrain, tick

    url = _read(STACK_FILE).get("retrain")
    if not url:
        print("error: the stack is not running (or predates the retrain check); run `make up`", file=sys.stderr)
        return 1
    line = tick(url, timeout_s=120.0, describe_answer=describe_retrain)
    print(f"retrain check: {line}")
    print(f"training logs: {LOGS / 'training'}; its state: {url}/status")
    return 0 if line.startswith("200") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "reset", "status", "url", "retrain"], help="what to do")
    parser.add_argument("name", nargs="?", help=f"with url: which service ({', '.join(PUBLIC)})")
    parser.add_argument(
        "--force", action="store_true", help="with down: stop even if Firestore's data cannot be exported"
    )
    args = parser.parse_args(argv)
    if args.command == "up":
        print("starting the local stack (logs in .local/logs/) ...", flush=True)
        try:
            urls = up()
        except (StackError, services.ServiceError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # what a dependency raised while starting: stopped already, say it plainly
            print(f"error: the stack could not start: {exc!r}; logs in {LOGS}", file=sys.stderr)
            return 1
        for name, url in sorted(urls.items()):
            print(f"{name:<17} {url}")
    elif args.command == "down":
        try:
            down(force=args.force)
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"stack stopped; its data is kept in {LOCAL_DIR} (`make reset` deletes it)")
    elif args.command == "reset":
        try:
            reset()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"stack stopped and {LOCAL_DIR} deleted: predictions, feedback, deployments, registry and buckets")
    elif args.command == "status":
        pids = _read(PIDS_FILE)
        if not pids:
            print("the stack is not running (`make up` starts it)")
        for name, pid in sorted(pids.items()):
            print(f"{name:<17} {'up' if services.alive(int(pid)) else 'DOWN'}")
    elif args.command == "retrain":
        return retrain_now()
    else:
        url = _read(STACK_FILE).get(args.name or "")
        if not url:
            print(f"error: {args.name!r} is not running; run `make up`", file=sys.stderr)
            return 1
        print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
