"""Black-box: both functions over HTTP against the Firestore emulator, item by item of docs/architecture.md."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime

import pytest

from sentiment_core.manifest import read_staged_folder
from tests.functions.conftest import ORIGIN, call, counted_from_records, counters, staged_dir

pytestmark = pytest.mark.usefixtures("clean_db")


def predict(url: str, text: str = "The food was great and the staff were lovely.", **extra) -> dict:
    answer = call(url + "/", {"text": text, **extra})
    assert answer.status == 201, answer.json
    return answer.json


def test_predict_single_answers_201_with_the_original_field_names(predict_url, trained) -> None:
    manifest, _ = read_staged_folder(staged_dir(trained))

    answer = call(predict_url + "/", {"text": "  Great food, friendly staff!  "})

    assert answer.status == 201
    body = answer.json
    assert set(body) == {"id", "text", "probability", "is_positive", "details", "feedback_token"}
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["text"] == "Great food, friendly staff!"
    assert 0.5 < body["probability"] <= 1.0
    assert body["is_positive"] == {"model_answered": True, "user_answered": None}
    details = body["details"]
    assert set(details) == {"model_name", "model_version", "mlflow_run_id", "inference_elapsed", "timestamp"}
    assert (details["model_name"], details["model_version"], details["mlflow_run_id"]) == (
        manifest.model_name,
        manifest.model_version,
        manifest.mlflow_run_id,
    )
    assert 0 < details["inference_elapsed"] < 1
    assert datetime.fromisoformat(details["timestamp"]).tzinfo is not None
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_predict_stores_every_prediction_with_the_model_identity(predict_url, clean_db, trained) -> None:
    body = predict(predict_url, "Terrible service and cold food.")

    stored = clean_db.collection("predictions").document(body["id"]).get().to_dict()

    assert body["is_positive"]["model_answered"] is False
    assert stored["text"] == "Terrible service and cold food."
    assert stored["probability"] == pytest.approx(body["probability"])
    assert stored["model_answer"] is False
    assert stored["user_answer"] is None
    assert stored["model_version"] == trained["model_version"]
    assert stored["mlflow_run_id"] == trained["run_id"]


def test_predict_with_user_answer_counts_as_feedback_at_once(predict_url, feedback_url, clean_db) -> None:
    body = predict(predict_url, "Lovely place", is_positive_user_answered=False)

    statistics = call(feedback_url + "/statistics").json["statistics"]

    assert body["is_positive"]["user_answered"] is False
    assert (statistics["predictions"], statistics["feedback"], statistics["correct"]) == (1, 1, 0)
    assert statistics["correctness_rate"] == 0.0


def test_predict_batch_answers_each_text_in_order(predict_url, clean_db) -> None:
    texts = ["Wonderful dinner.", "Awful, rude and dirty.", "Best coffee in town."]

    answer = call(predict_url + "/", {"texts": texts})

    assert answer.status == 201
    predictions = answer.json["predictions"]
    assert [p["text"] for p in predictions] == texts
    assert [p["is_positive"]["model_answered"] for p in predictions] == [True, False, True]
    assert len({p["id"] for p in predictions}) == 3
    assert clean_db.collection("predictions").count().get()[0][0].value == 3


def test_predict_batch_of_100_is_accepted_and_101_refused(predict_url) -> None:
    assert call(predict_url + "/", {"texts": [f"review {i}" for i in range(100)]}).status == 201
    assert call(predict_url + "/", {"texts": [f"review {i}" for i in range(101)]}).error_code == "invalid_batch"


def test_predict_text_limits_are_after_trimming(predict_url) -> None:
    assert call(predict_url + "/", {"text": " " * 10 + "x" * 5000 + "\n"}).status == 201
    assert call(predict_url + "/", {"text": "x" * 5001}).error_code == "invalid_text"
    assert call(predict_url + "/", {"text": "tab\tand\nnewline are fine"}).status == 201


def test_healthz_reports_the_served_model(predict_url, trained) -> None:
    answer = call(predict_url + "/healthz")

    assert answer.status == 200
    assert answer.json == {
        "status": "ok",
        "model_name": "yelp-sentiment",
        "model_version": trained["model_version"],
        "mlflow_run_id": trained["run_id"],
    }


def test_feedback_records_the_answer_once_and_conflicts_on_change(predict_url, feedback_url, clean_db) -> None:
    body = predict(predict_url)
    request = {"prediction_id": body["id"], "is_positive_user_answered": True, "feedback_token": body["feedback_token"]}

    first = call(feedback_url + "/", request)
    again = call(feedback_url + "/", request)
    changed = call(feedback_url + "/", request | {"is_positive_user_answered": False})

    assert first.status == 200
    assert first.json["id"] == body["id"]
    assert first.json["is_positive"] == {"model_answered": True, "user_answered": True}
    assert again.status == 200
    assert again.json == first.json
    assert changed.status == 409
    assert changed.error_code == "feedback_conflict"
    statistics = call(feedback_url + "/statistics").json["statistics"]
    assert (statistics["predictions"], statistics["feedback"], statistics["correct"]) == (1, 1, 1)
    assert clean_db.collection("predictions").document(body["id"]).get().to_dict()["user_answer"] is True


def test_statistics_overall_and_per_model_version(predict_url, feedback_url, trained, clean_db) -> None:
    empty = call(feedback_url + "/statistics").json["statistics"]
    bodies = [predict(predict_url, t) for t in ("Great food.", "Horrible food.", "Nice staff.")]
    for body, answer in zip(bodies, [True, True, True], strict=True):
        call(
            feedback_url + "/",
            {
                "prediction_id": body["id"],
                "is_positive_user_answered": answer,
                "feedback_token": body["feedback_token"],
            },
        )

    statistics = call(feedback_url + "/statistics").json["statistics"]

    assert empty == {"correctness_rate": None, "predictions": 0, "feedback": 0, "correct": 0, "by_model_version": {}}
    expected = {"correctness_rate": pytest.approx(2 / 3), "predictions": 3, "feedback": 3, "correct": 2}
    assert {k: v for k, v in statistics.items() if k != "by_model_version"} == expected
    assert statistics["by_model_version"] == {trained["model_version"]: expected}
    assert counters(clean_db)[trained["model_version"]] == counted_from_records(clean_db, trained["model_version"])


def test_predictions_list_is_newest_first_and_paginates_without_overlap(predict_url, feedback_url) -> None:
    ids = [predict(predict_url, f"review number {i} was good")["id"] for i in range(5)]

    seen, token, pages = [], None, 0
    while True:
        query = "/predictions?limit=2" + (f"&page_token={token}" if token else "")
        page = call(feedback_url + query)
        assert page.status == 200
        seen += [p["id"] for p in page.json["predictions"]]
        assert "feedback_token" not in (page.json["predictions"] or [{}])[0]
        pages += 1
        token = page.json["next_page_token"]
        if token is None:
            break

    assert seen == list(reversed(ids))
    assert pages == 3


def test_cors_allowed_origin_gets_the_header_others_do_not(predict_url, feedback_url) -> None:
    allowed = call(predict_url + "/healthz", headers={"Origin": ORIGIN})
    other = call(feedback_url + "/statistics", headers={"Origin": "https://evil.example"})

    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"


def test_cors_preflight_answers_204_with_methods_and_headers(predict_url) -> None:
    answer = call(
        predict_url + "/",
        method="OPTIONS",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type, Idempotency-Key"


@pytest.mark.parametrize(
    ("function", "path", "method", "allow"),
    [
        ("predict", "/", "GET", "POST, OPTIONS"),
        ("predict", "/healthz", "POST", "GET, OPTIONS"),
        ("feedback", "/", "PUT", "POST, OPTIONS"),
        ("feedback", "/statistics", "DELETE", "GET, OPTIONS"),
    ],
)
def test_wrong_method_is_405_with_allow(predict_url, feedback_url, function, path, method, allow) -> None:
    url = predict_url if function == "predict" else feedback_url

    answer = call(url + path, method=method, raw=b"{}" if method != "GET" else None)

    assert answer.status == 405
    assert answer.headers["Allow"] == allow
    assert answer.error_code == "method_not_allowed"


def test_unknown_path_is_a_json_404(feedback_url) -> None:
    answer = call(feedback_url + "/admin")

    assert answer.status == 404
    assert answer.json == {"error": {"code": "not_found", "message": "no route /admin"}}


def test_errors_are_json_with_a_stable_code_and_message(predict_url) -> None:
    answer = call(predict_url + "/", raw=b"{", headers={"Content-Type": "application/json"})

    assert answer.status == 400
    assert set(answer.json) == {"error"}
    assert set(answer.json["error"]) == {"code", "message"}
    assert answer.json["error"]["code"] == "invalid_json"
    json.dumps(answer.json)  # round-trips


def test_predict_with_explain_answers_the_top_terms_and_stores_no_explanation(predict_url, clean_db) -> None:
    answer = call(predict_url + "/", {"text": "The food was great, the staff great and friendly.", "explain": True})

    assert answer.status == 201
    explanation = answer.json["details"]["explanation"]
    assert set(explanation) == {"bias", "terms"}
    assert isinstance(explanation["bias"], float)
    terms = explanation["terms"]
    assert 1 <= len(terms) <= 10
    assert all(set(t) == {"term", "weight"} for t in terms)
    assert [abs(t["weight"]) for t in terms] == sorted((abs(t["weight"]) for t in terms), reverse=True)
    tokens = ["the", "food", "was", "great", "the", "staff", "great", "and", "friendly"]
    assert {t["term"] for t in terms} <= set(tokens) | {f"{a} {b}" for a, b in itertools.pairwise(tokens)}
    stored = clean_db.collection("predictions").document(answer.json["id"]).get().to_dict()
    assert "explanation" not in stored


def test_predict_batch_with_explain_explains_each_text(predict_url) -> None:
    answer = call(predict_url + "/", {"texts": ["Wonderful dinner.", "Awful, rude and dirty."], "explain": True})
    plain = call(predict_url + "/", {"texts": ["Wonderful dinner."], "explain": False})

    assert answer.status == 201
    first, second = answer.json["predictions"]
    assert first["details"]["explanation"]["bias"] == second["details"]["explanation"]["bias"]
    assert {t["term"] for t in second["details"]["explanation"]["terms"]} <= {
        "awful",
        "rude",
        "and",
        "dirty",
        "awful rude",
        "rude and",
        "and dirty",
    }
    assert "explanation" not in plain.json["predictions"][0]["details"]


@pytest.mark.parametrize("value", ["true", 1, None, [True]])
def test_predict_explain_must_be_a_boolean(predict_url, clean_db, value) -> None:
    single = call(predict_url + "/", {"text": "Good.", "explain": value})
    batch = call(predict_url + "/", {"texts": ["Good."], "explain": value})

    assert (single.status, single.error_code) == (400, "invalid_type")
    assert (batch.status, batch.error_code) == (400, "invalid_type")
    assert clean_db.collection("predictions").count().get()[0][0].value == 0
