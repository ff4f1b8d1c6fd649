"""feedback's handlers: errors raised from many threads at once stay apart; the deployment beside the
statistics, read from the real Firestore emulator, and statistics served when that document cannot be read."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import flask
import pytest
from google.cloud import firestore

from localdev import services
from sentiment_core import http
from sentiment_core.config import ConfigError
from sentiment_core.contract import MODEL_NAME
from sentiment_core.deployment_store import DeploymentStore
from sentiment_core.deployments import DeploymentState, Rollout, Serving
from sentiment_core.evidence import EVIDENCE_CLIENTS
from sentiment_core.records import Prediction, StoreUnavailable
from sentiment_core.rollout import RolloutStatus, VersionCounts
from sentiment_core.store import Store, window_evidence
from sentiment_core.tokens import feedback_token
from tests.functions.conftest import SECRET, STORE_TIMEOUT_S, call, feedback_module
from tests.support import PROJECT, baking_rollout, monitored_prediction, save_predictions

service = feedback_module("feedback_service")


def test_store_unavailable_from_concurrent_threads_gives_each_its_own_error_and_cause() -> None:
    """Each 503 carries the cause of its own request, not that of whichever thread raised last."""
    app = flask.Flask(__name__)
    barrier = threading.Barrier(8)
    raised: dict[int, http.ApiError] = {}

    class DownStore:
        def __init__(self, n: int) -> None:
            self.n = n

        def statistics(self):
            barrier.wait(timeout=10)  # every thread inside the handler at once
            raise StoreUnavailable(f"store down for request {self.n}")

    def request(n: int) -> None:
        with app.test_request_context("/statistics"):
            try:
                service.handle_statistics(flask.request, lambda: DownStore(n), never_read)
            except http.ApiError as error:
                raised[n] = error

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(raised) == list(range(8))
    assert len({id(error) for error in raised.values()}) == 8
    assert {n: str(error.__cause__) for n, error in raised.items()} == {
        n: f"store down for request {n}" for n in range(8)
    }
    assert {(e.status, e.code) for e in raised.values()} == {(503, "store_unavailable")}


# A client's deadline that only a hung request reaches (the read's own bound is STORE_TIMEOUT_S).
HANG_S = 30.0


def never_read() -> DeploymentStore:
    raise AssertionError("the deployment document is read only once the statistics are")


# --- Which versions serve (the "deployment" of GET /statistics) ----------------------------------------------

AT = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
IN_PROGRESS = baking_rollout(AT)  # version 2 at 10% beside version 1


def serving(version: str) -> Serving:
    return Serving(version, f"r{version}", "0" * 64, f"gs://staged/yelp-sentiment/v{version}", f"e{version}", AT)


def ended(status: RolloutStatus, percent: int) -> Rollout:
    return dataclasses.replace(IN_PROGRESS, state=status, candidate_percent=percent, ended_at=AT)


def deployment(stable: str | None, candidate: str | None, percent: int, state: str | None) -> dict:
    return {
        "stable_version": stable,
        "candidate_version": candidate,
        "candidate_percent": percent,
        "rollout_state": state,
    }


DEPLOYMENTS = [
    # (the document's state, what GET /statistics reports)
    (DeploymentState(), deployment(None, None, 0, None)),
    (DeploymentState(serving=serving("1")), deployment("1", None, 0, None)),
    # During a rollout the stable version is the rollout's: `serving` still names the last full redeploy.
    (DeploymentState(serving=serving("1"), rollout=IN_PROGRESS), deployment("1", "2", 10, "in_progress")),
    (
        DeploymentState(serving=serving("2"), rollout=ended(RolloutStatus.COMPLETED, 100)),
        deployment("2", None, 0, "completed"),
    ),
    (
        DeploymentState(serving=serving("1"), rollout=ended(RolloutStatus.ROLLED_BACK, 0)),
        deployment("1", None, 0, "rolled_back"),
    ),
    (
        DeploymentState(serving=serving("1"), rollout=ended(RolloutStatus.ABORTED, 0)),
        deployment("1", None, 0, "aborted"),
    ),
    (DeploymentState(rollout=IN_PROGRESS), deployment("1", "2", 10, "in_progress")),
]
DEPLOYMENT_IDS = ["none", "serving", "rollout-in-progress", "completed", "rolled-back", "aborted", "rollout-only"]


@pytest.mark.parametrize(("state", "expected"), DEPLOYMENTS, ids=DEPLOYMENT_IDS)
def test_deployment_summary_of_each_state_names_stable_candidate_and_share(state, expected: dict) -> None:
    assert service.DeploymentSummary.of(state).as_api() == expected


def test_settings_model_name_defaults_to_the_contracts_and_follows_model_name() -> None:
    env = {"FEEDBACK_TOKEN_SECRET": SECRET}

    assert service.Settings.from_env(env).model_name == "yelp-sentiment"
    assert service.Settings.from_env(env | {"MODEL_NAME": "another-model"}).model_name == "another-model"


def write_deployment(db: firestore.Client, state: DeploymentState) -> None:
    store = DeploymentStore(db, MODEL_NAME)
    assert store.commit(store.read(), state)


@pytest.mark.parametrize(
    ("state", "expected"),
    [DEPLOYMENTS[0], DEPLOYMENTS[2], DEPLOYMENTS[3], DEPLOYMENTS[4]],
    ids=["no-document", "rollout-in-progress", "completed", "rolled-back"],
)
def test_statistics_report_the_deployment_document(feedback_url, clean_db, state, expected: dict) -> None:
    if state != DeploymentState():  # the first case has no document at all
        write_deployment(clean_db, state)

    answer = call(feedback_url + "/statistics")

    assert answer.status == 200
    assert answer.json["deployment"] == expected
    assert answer.json["statistics"]["by_model_version"] == {}


def test_statistics_with_a_deployment_document_it_cannot_read_report_no_deployment(feedback_url, clean_db) -> None:
    # A part without the fields this code needs (a newer writer's format): the statistics do not depend on it.
    clean_db.collection("deployments").document(MODEL_NAME).set({"serving": {"version": "3"}})

    answer = call(feedback_url + "/statistics")

    assert answer.status == 200
    assert answer.json["deployment"] is None
    assert answer.json["statistics"]["predictions"] == 0


def test_statistics_when_firestore_hangs_before_the_deployment_read_are_served_without_it(
    firestore_emulator, clean_db, caplog: pytest.LogCaptureFixture
) -> None:
    """The statistics were read; then Firestore hangs (SIGSTOP): the answer is 200 with "deployment": null, well
    before a client's deadline (the client library alone would wait out a hung read for 300 s)."""
    write_deployment(clean_db, DeploymentState(serving=serving("1"), rollout=IN_PROGRESS))
    app = flask.Flask(__name__)

    # The freeze ends first, then the pool waits for its thread: a hung read cannot outlive the test.
    with ThreadPoolExecutor(1) as pool, contextlib.ExitStack() as hung:

        def deployments_once_firestore_hangs() -> DeploymentStore:
            hung.enter_context(services.frozen(firestore_emulator.pid))
            return DeploymentStore(clean_db, MODEL_NAME, timeout_s=STORE_TIMEOUT_S)

        def statistics() -> flask.Response:
            with app.test_request_context("/statistics"):
                store = Store(clean_db, STORE_TIMEOUT_S)
                return service.handle_statistics(flask.request, lambda: store, deployments_once_firestore_hangs)

        response = pool.submit(statistics).result(timeout=HANG_S)

    assert response.status_code == 200
    assert response.get_json() == {
        "statistics": {"correctness_rate": None, "predictions": 0, "feedback": 0, "correct": 0, "by_model_version": {}},
        "deployment": None,
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "sentiment"]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["statistics served without the deployment"]


# --- Listing predictions: personal data, served only where PREDICTIONS_LISTING is on ---------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, False), ({"PREDICTIONS_LISTING": "off"}, False), ({"PREDICTIONS_LISTING": "on"}, True)],
    ids=["default", "off", "on"],
)
def test_settings_predictions_listing_is_off_unless_turned_on(env: dict, expected: bool) -> None:
    settings = service.Settings.from_env({"FEEDBACK_TOKEN_SECRET": SECRET} | env)

    assert settings.predictions_listing is expected


@pytest.mark.parametrize("value", ["yes", "true", "ON", "1"])
def test_settings_predictions_listing_other_than_on_or_off_fails_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match="PREDICTIONS_LISTING must be on or off"):
        service.Settings.from_env({"FEEDBACK_TOKEN_SECRET": SECRET, "PREDICTIONS_LISTING": value})


@pytest.mark.parametrize("query", ["", "?limit=100", "?limit=0", "?page_token=x", "?order=asc"])
def test_predictions_listing_off_answers_json_404_without_any_text(
    public_feedback_url, firestore_emulator, clean_db, query: str
) -> None:
    """Whatever the query, the public deployment says the route is off before looking at it or at the store."""
    review = "Private review: the waiter Anna Example was rude to me"
    save_predictions(firestore_emulator.url, [monitored_prediction("1", 0.2, datetime.now(UTC), text=review)])

    answer = call(public_feedback_url + "/predictions" + query)

    assert answer.status == 404
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json == {"error": {"code": "listing_disabled", "message": "listing predictions is not served here"}}
    assert b"Anna" not in answer.raw


def test_predictions_listing_off_leaves_the_other_routes_served(public_feedback_url, clean_db) -> None:
    assert call(public_feedback_url + "/statistics").status == 200
    assert call(public_feedback_url + "/monitoring").status == 200


def test_predictions_listing_on_pages_through_the_stored_texts(feedback_url, firestore_emulator, clean_db) -> None:
    save_predictions(firestore_emulator.url, [monitored_prediction("1", 0.2, datetime.now(UTC), text="Fine food.")])

    answer = call(feedback_url + "/predictions")

    assert answer.status == 200
    assert [p["text"] for p in answer.json["predictions"]] == ["Fine food."]


# Evidence one client cannot forge: feedback under functions-framework as Terraform configures it behind the
# load balancer (CLIENT_ADDRESS_HOPS=2, the default), requests carrying the load balancer's X-Forwarded-For.
LOAD_BALANCER = "34.120.0.1"
CAP = 4


@pytest.fixture(scope="module")
def capped_feedback_url(firestore_emulator, tmp_path_factory) -> Iterator[str]:
    """feedback alone (no model to train: it serves none) with EVIDENCE_MAX_PER_CLIENT=4."""
    env = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FEEDBACK_TOKEN_SECRET": SECRET,
        "FIRESTORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
        "EVIDENCE_MAX_PER_CLIENT": str(CAP),
    }
    with services.start_function(
        "feedback", tmp_path_factory.mktemp("capped-feedback"), env, ready_path="/statistics"
    ) as service:
        yield service.url


def unanswered_predictions(firestore_host: str, count: int, version: str = "7") -> list:
    from sentiment_core.firestore_rest import RestPredictionWriter

    now = datetime.now(UTC)
    made = [
        Prediction(uuid.uuid4().hex, "food", 0.9, True, None, MODEL_NAME, version, "run", 0.001, now)
        for _ in range(count)
    ]
    writer = RestPredictionWriter(PROJECT, "(default)", 5.0, endpoint=f"http://{firestore_host}", token=lambda: "owner")
    try:
        writer.save_predictions(made)
    finally:
        writer.close()
    return made


def answer(feedback_url: str, prediction, agree: bool, forwarded_for: str | None) -> int:
    body = {
        "prediction_id": prediction.id,
        "is_positive_user_answered": agree,
        "feedback_token": feedback_token(SECRET.encode(), prediction.id),
    }
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else None
    return call(feedback_url, body, headers=headers).status


def test_feedback_of_one_client_with_forged_prefixes_counts_as_evidence_up_to_the_cap(
    capped_feedback_url, clean_db, firestore_emulator
) -> None:
    """Seven wrong answers from one address, each behind another forged X-Forwarded-For prefix: four count."""
    predictions = unanswered_predictions(firestore_emulator.url, 7)

    statuses = [
        answer(capped_feedback_url, p, False, f"198.51.100.{i},203.0.113.7,{LOAD_BALANCER}")
        for i, p in enumerate(predictions)
    ]

    stored = [Prediction.from_snapshot(clean_db.collection("predictions").document(p.id).get()) for p in predictions]
    assert statuses == [200] * 7
    assert window_evidence(clean_db, "7", predictions[0].created_at) == VersionCounts("7", 7, 7, feedback=CAP)
    assert [s.counted_as_evidence for s in stored] == [True] * CAP + [False] * 3
    assert len({s.client_fingerprint for s in stored}) == 1
    documents = [d.to_dict() for c in ("predictions", EVIDENCE_CLIENTS) for d in clean_db.collection(c).stream()]
    assert "203.0.113.7" not in str(documents)
    assert call(f"{capped_feedback_url}/statistics").json["statistics"]["feedback"] == 7


def test_feedback_of_many_clients_all_counts_as_evidence(capped_feedback_url, clean_db, firestore_emulator) -> None:
    predictions = unanswered_predictions(firestore_emulator.url, 7)

    for i, p in enumerate(predictions):
        assert answer(capped_feedback_url, p, False, f"203.0.113.{i},{LOAD_BALANCER}") == 200

    assert window_evidence(clean_db, "7", predictions[0].created_at).feedback == 7


def test_feedback_without_a_load_balancer_header_is_the_peers(
    capped_feedback_url, clean_db, firestore_emulator
) -> None:
    """Fewer entries than CLIENT_ADDRESS_HOPS: the header is the client's own, and all of it is one client."""
    predictions = unanswered_predictions(firestore_emulator.url, 7)

    for i, p in enumerate(predictions):
        assert answer(capped_feedback_url, p, False, f"203.0.113.{i}" if i % 2 else None) == 200

    assert window_evidence(clean_db, "7", predictions[0].created_at).feedback == CAP
