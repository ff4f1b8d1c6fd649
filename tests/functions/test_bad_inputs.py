"""Table-driven: every bad input gets the right 4xx JSON error, never a 5xx, and leaves nothing in Firestore."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from typing import Any

import pytest

from sentiment_core.tokens import feedback_token
from tests.functions.conftest import SECRET, call, counters

JSON = {"Content-Type": "application/json"}
UNKNOWN_ID = "0" * 32
VALID_TOKEN_UNKNOWN_ID = feedback_token(SECRET.encode(), UNKNOWN_ID)


def deep(depth: int) -> bytes:
    return b'{"text":' + b"[" * depth + b"]" * depth + b"}"


def page_token(time: str) -> str:
    """A page token of the shape this service issues, at `time`."""
    raw = json.dumps({"t": time, "id": UNKNOWN_ID}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def feedback_body(**fields: str) -> bytes:
    """A feedback body (a known id and its valid token) with `fields` given as raw JSON texts, so escapes stay
    exactly as sent; a key given as `k_<name>` is the raw JSON text of an extra key (with its quotes)."""
    values = {
        '"prediction_id"': json.dumps(UNKNOWN_ID),
        '"is_positive_user_answered"': "true",
        '"feedback_token"': json.dumps(VALID_TOKEN_UNKNOWN_ID),
    }
    for name, value in fields.items():
        values[name.removeprefix("k_") if name.startswith("k_") else json.dumps(name)] = value
    return ("{" + ", ".join(f"{key}: {value}" for key, value in values.items()) + "}").encode()


# (case id, function, path, method, raw body, headers, expected status, expected code)
CASES: list[tuple[str, str, str, str, bytes | None, dict[str, str], int, str]] = [
    ("not-json", "predict", "/", "POST", b"great food", JSON, 400, "invalid_json"),
    ("truncated-json", "predict", "/", "POST", b'{"text": "great', JSON, 400, "invalid_json"),
    ("empty-body", "predict", "/", "POST", b"", JSON, 400, "invalid_json"),
    ("json-array", "predict", "/", "POST", b'["great food"]', JSON, 400, "invalid_json"),
    ("json-string", "predict", "/", "POST", b'"great food"', JSON, 400, "invalid_json"),
    ("json-null", "predict", "/", "POST", b"null", JSON, 400, "invalid_json"),
    ("nan", "predict", "/", "POST", b'{"text": NaN}', JSON, 400, "invalid_json"),
    (
        "infinity",
        "predict",
        "/",
        "POST",
        b'{"text": "a", "is_positive_user_answered": Infinity}',
        JSON,
        400,
        "invalid_json",
    ),
    ("duplicate-key", "predict", "/", "POST", b'{"text": "a", "text": "b"}', JSON, 400, "invalid_json"),
    ("deep-nesting", "predict", "/", "POST", deep(20_000), JSON, 400, "invalid_json"),
    ("non-utf8", "predict", "/", "POST", b'{"text": "caf\xe9"}', JSON, 400, "invalid_encoding"),
    (
        "wrong-content-type",
        "predict",
        "/",
        "POST",
        b'{"text": "great"}',
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    (
        "form-content-type",
        "predict",
        "/",
        "POST",
        b"text=great",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
    ),
    ("no-content-type", "predict", "/", "POST", b'{"text": "great"}', {}, 415, "unsupported_media_type"),
    ("too-large", "predict", "/", "POST", json.dumps({"text": "x" * 70_000}).encode(), JSON, 413, "body_too_large"),
    ("missing-text", "predict", "/", "POST", b"{}", JSON, 400, "missing_field"),
    ("unknown-field", "predict", "/", "POST", b'{"text": "great", "admin": true}', JSON, 400, "unknown_field"),
    ("text-number", "predict", "/", "POST", b'{"text": 5}', JSON, 400, "invalid_type"),
    ("text-null", "predict", "/", "POST", b'{"text": null}', JSON, 400, "invalid_type"),
    ("text-object", "predict", "/", "POST", b'{"text": {"a": 1}}', JSON, 400, "invalid_type"),
    (
        "answer-is-1",
        "predict",
        "/",
        "POST",
        b'{"text": "great", "is_positive_user_answered": 1}',
        JSON,
        400,
        "invalid_type",
    ),
    (
        "answer-is-string",
        "predict",
        "/",
        "POST",
        b'{"text": "great", "is_positive_user_answered": "true"}',
        JSON,
        400,
        "invalid_type",
    ),
    ("empty-text", "predict", "/", "POST", b'{"text": ""}', JSON, 400, "invalid_text"),
    ("blank-text", "predict", "/", "POST", b'{"text": " \\n\\t "}', JSON, 400, "invalid_text"),
    ("too-long-text", "predict", "/", "POST", json.dumps({"text": "y" * 5001}).encode(), JSON, 400, "invalid_text"),
    ("control-char", "predict", "/", "POST", b'{"text": "bad\\u0000byte"}', JSON, 400, "invalid_text"),
    ("escape-char", "predict", "/", "POST", b'{"text": "ansi \\u001b[31m"}', JSON, 400, "invalid_text"),
    ("lone-surrogate", "predict", "/", "POST", b'{"text": "half \\ud800 pair"}', JSON, 400, "invalid_unicode"),
    ("lone-low-surrogate", "predict", "/", "POST", b'{"text": "\\uDFFF"}', JSON, 400, "invalid_unicode"),
    ("reversed-pair", "predict", "/", "POST", b'{"text": "\\ude00\\ud83d"}', JSON, 400, "invalid_unicode"),
    ("surrogate-key", "predict", "/", "POST", b'{"text": "great", "\\udc00": 1}', JSON, 400, "invalid_unicode"),
    (
        "surrogate-deep",
        "predict",
        "/",
        "POST",
        b'{"texts": ["ok", {"a": [["\\udbff"]]}]}',
        JSON,
        400,
        "invalid_unicode",
    ),
    (
        "surrogate-explain",
        "predict",
        "/",
        "POST",
        b'{"text": "ok", "explain": "\\ud800"}',
        JSON,
        400,
        "invalid_unicode",
    ),
    ("texts-empty", "predict", "/", "POST", b'{"texts": []}', JSON, 400, "invalid_batch"),
    ("texts-not-list", "predict", "/", "POST", b'{"texts": "great"}', JSON, 400, "invalid_type"),
    ("texts-bad-item", "predict", "/", "POST", b'{"texts": ["ok", 3]}', JSON, 400, "invalid_type"),
    ("texts-empty-item", "predict", "/", "POST", b'{"texts": ["ok", "  "]}', JSON, 400, "invalid_text"),
    ("text-and-texts", "predict", "/", "POST", b'{"texts": ["ok"], "text": "ok"}', JSON, 400, "unknown_field"),
    (
        "texts-with-answer",
        "predict",
        "/",
        "POST",
        b'{"texts": ["ok"], "is_positive_user_answered": true}',
        JSON,
        400,
        "unknown_field",
    ),
    (
        "feedback-missing",
        "feedback",
        "/",
        "POST",
        b'{"prediction_id": "' + UNKNOWN_ID.encode() + b'"}',
        JSON,
        400,
        "missing_field",
    ),
    (
        "feedback-bad-id-pattern",
        "feedback",
        "/",
        "POST",
        json.dumps({"prediction_id": "../../etc", "is_positive_user_answered": True, "feedback_token": "x"}).encode(),
        JSON,
        400,
        "invalid_id",
    ),
    (
        "feedback-id-uppercase",
        "feedback",
        "/",
        "POST",
        json.dumps({"prediction_id": "A" * 32, "is_positive_user_answered": True, "feedback_token": "x"}).encode(),
        JSON,
        400,
        "invalid_id",
    ),
    (
        "feedback-forged-token",
        "feedback",
        "/",
        "POST",
        json.dumps(
            {"prediction_id": UNKNOWN_ID, "is_positive_user_answered": True, "feedback_token": "forged"}
        ).encode(),
        JSON,
        403,
        "invalid_feedback_token",
    ),
    (
        "feedback-unknown-id",
        "feedback",
        "/",
        "POST",
        json.dumps(
            {"prediction_id": UNKNOWN_ID, "is_positive_user_answered": True, "feedback_token": VALID_TOKEN_UNKNOWN_ID}
        ).encode(),
        JSON,
        404,
        "prediction_not_found",
    ),
    (
        "feedback-answer-int",
        "feedback",
        "/",
        "POST",
        json.dumps(
            {"prediction_id": UNKNOWN_ID, "is_positive_user_answered": 0, "feedback_token": VALID_TOKEN_UNKNOWN_ID}
        ).encode(),
        JSON,
        400,
        "invalid_type",
    ),
    (
        "feedback-extra-field",
        "feedback",
        "/",
        "POST",
        json.dumps(
            {
                "prediction_id": UNKNOWN_ID,
                "is_positive_user_answered": True,
                "feedback_token": VALID_TOKEN_UNKNOWN_ID,
                "correct": True,
            }
        ).encode(),
        JSON,
        400,
        "unknown_field",
    ),
    (
        "feedback-token-surrogate",
        "feedback",
        "/",
        "POST",
        feedback_body(feedback_token='"\\ud800"'),
        JSON,
        400,
        "invalid_unicode",
    ),
    (
        "feedback-surrogate-key",
        "feedback",
        "/",
        "POST",
        feedback_body(**{'k_"\\udc00"': "1"}),
        JSON,
        400,
        "invalid_unicode",
    ),
    (
        "feedback-id-surrogate",
        "feedback",
        "/",
        "POST",
        feedback_body(prediction_id='"\\ud800' + "0" * 31 + '"'),
        JSON,
        400,
        "invalid_unicode",
    ),
    (
        "feedback-token-not-ascii",
        "feedback",
        "/",
        "POST",
        feedback_body(feedback_token=json.dumps("\u00e9" * 43, ensure_ascii=False)),
        JSON,
        403,
        "invalid_feedback_token",
    ),
    ("predictions-limit-superscript", "feedback", "/predictions?limit=%C2%B2", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-arabic-one", "feedback", "/predictions?limit=%D9%A1", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-fullwidth", "feedback", "/predictions?limit=%EF%BC%95", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-space", "feedback", "/predictions?limit=%205", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-newline", "feedback", "/predictions?limit=5%0A", "GET", None, {}, 400, "invalid_limit"),
    (
        "predictions-token-past-utc-max",
        "feedback",
        "/predictions?page_token=" + page_token("9999-12-31T23:59:59-14:00"),
        "GET",
        None,
        {},
        400,
        "invalid_page_token",
    ),
    (
        "predictions-token-before-utc-min",
        "feedback",
        "/predictions?page_token=" + page_token("0001-01-01T00:00:00+14:00"),
        "GET",
        None,
        {},
        400,
        "invalid_page_token",
    ),
    (
        "predictions-token-not-ascii",
        "feedback",
        "/predictions?page_token=%C3%A9t%C3%A9",
        "GET",
        None,
        {},
        400,
        "invalid_page_token",
    ),
    ("monitoring-hours-superscript", "feedback", "/monitoring?hours=%C2%B2", "GET", None, {}, 400, "invalid_hours"),
    ("predictions-limit-zero", "feedback", "/predictions?limit=0", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-big", "feedback", "/predictions?limit=101", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-text", "feedback", "/predictions?limit=ten", "GET", None, {}, 400, "invalid_limit"),
    ("predictions-limit-negative", "feedback", "/predictions?limit=-5", "GET", None, {}, 400, "invalid_limit"),
    (
        "predictions-bad-token",
        "feedback",
        "/predictions?page_token=not-a-token",
        "GET",
        None,
        {},
        400,
        "invalid_page_token",
    ),
    (
        "predictions-forged-token",
        "feedback",
        "/predictions?page_token=eyJ0IjoiMjAyNi0wMS0wMVQwMDowMDowMCIsImlkIjoiLi4vLi4ifQ",
        "GET",
        None,
        {},
        400,
        "invalid_page_token",
    ),
    ("predictions-unknown-param", "feedback", "/predictions?order=asc", "GET", None, {}, 400, "unknown_parameter"),
    ("statistics-param", "feedback", "/statistics?version=1", "GET", None, {}, 400, "unknown_parameter"),
    ("monitoring-hours-zero", "feedback", "/monitoring?hours=0", "GET", None, {}, 400, "invalid_hours"),
    ("monitoring-hours-week-and-more", "feedback", "/monitoring?hours=169", "GET", None, {}, 400, "invalid_hours"),
    ("monitoring-hours-fraction", "feedback", "/monitoring?hours=2.5", "GET", None, {}, 400, "invalid_hours"),
    ("predict-wrong-method", "predict", "/", "PUT", b"{}", JSON, 405, "method_not_allowed"),
    ("predict-unknown-path", "predict", "/predict/v2", "POST", b"{}", JSON, 404, "not_found"),
    # Paths the framework's own routing refuses before the entry point runs (a newline inside a segment, the
    # framework's reserved /robots.txt and /favicon.ico): answered by the JSON handlers main.py registers.
    ("predict-path-newline", "predict", "/a%0Ab", "GET", None, {}, 404, "not_found"),
    ("predict-path-trailing-newline", "predict", "/healthz%0A", "GET", None, {}, 404, "not_found"),
    ("predict-robots", "predict", "/robots.txt", "GET", None, {}, 404, "not_found"),
    ("predict-favicon", "predict", "/favicon.ico", "GET", None, {}, 404, "not_found"),
    ("feedback-path-newline", "feedback", "/predictions%0A%0A", "GET", None, {}, 404, "not_found"),
    ("feedback-path-nested-newline", "feedback", "/a/%0A", "GET", None, {}, 404, "not_found"),
    ("feedback-robots", "feedback", "/robots.txt", "GET", None, {}, 404, "not_found"),
    ("feedback-wrong-method", "feedback", "/statistics", "DELETE", None, {}, 405, "method_not_allowed"),
    ("predict-double-slash", "predict", "//", "PATCH", None, {}, 405, "method_not_allowed"),
]


def state(db) -> tuple[int, dict]:
    return db.collection("predictions").count().get()[0][0].value, counters(db)


@pytest.mark.parametrize(
    ("function", "path", "method", "body", "headers", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_gets_4xx_json_error_and_leaves_firestore_unchanged(
    predict_url, feedback_url, clean_db, function, path, method, body, headers, status, code
) -> None:
    url = (predict_url if function == "predict" else feedback_url) + path
    before = state(clean_db)

    answer = call(url, method=method, raw=body, headers=headers)

    assert (answer.status, answer.error_code) == (status, code), answer.json or answer.raw[:300]
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json["error"]) == {"code", "message"}
    assert state(clean_db) == before


def test_table_has_at_least_30_distinct_bad_inputs() -> None:
    assert len({case[0] for case in CASES}) == len(CASES) >= 30


def test_chunked_body_over_the_limit_is_refused_without_content_length(predict_url, clean_db) -> None:
    """A chunked body has no Content-Length to check; the limit holds on what is actually read."""
    parsed = urllib.parse.urlparse(predict_url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    body = json.dumps({"text": "z" * 80_000}).encode()
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    try:
        connection.request("POST", "/", body=chunks, headers=JSON, encode_chunked=True)
        response = connection.getresponse()
        payload: Any = json.loads(response.read())
    finally:
        connection.close()

    assert response.status == 413
    assert payload["error"]["code"] == "body_too_large"
    assert state(clean_db) == (0, {})


def test_chunked_small_body_is_accepted(predict_url, clean_db) -> None:
    parsed = urllib.parse.urlparse(predict_url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    body = json.dumps({"text": "Great food, chunked."}).encode()
    try:
        connection.request("POST", "/", body=iter([body[:10], body[10:]]), headers=JSON, encode_chunked=True)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()

    assert response.status == 201


def _conflict_setup(predict_url, feedback_url) -> tuple[dict, dict]:
    body = call(predict_url + "/", {"text": "Fine place."}).json
    request = {"prediction_id": body["id"], "is_positive_user_answered": True, "feedback_token": body["feedback_token"]}
    assert call(feedback_url + "/", request).status == 200
    return body, request


def test_repeated_and_conflicting_feedback_change_nothing(predict_url, feedback_url, clean_db) -> None:
    body, request = _conflict_setup(predict_url, feedback_url)
    before = state(clean_db)

    repeated = call(feedback_url + "/", request)
    conflicting = call(feedback_url + "/", request | {"is_positive_user_answered": False})
    other_token = call(
        feedback_url + "/", request | {"feedback_token": feedback_token(b"wrong-secret-123456", body["id"])}
    )

    assert repeated.status == 200
    assert (conflicting.status, conflicting.error_code) == (409, "feedback_conflict")
    assert (other_token.status, other_token.error_code) == (403, "invalid_feedback_token")
    assert state(clean_db) == before
