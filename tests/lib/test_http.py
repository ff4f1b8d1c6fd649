"""The shared HTTP boundary on its own: what JSON it lets through, errors it cannot fail to answer, page tokens and
feedback tokens that refuse rather than raise. No server: a Flask request context is the whole request."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import flask
import pytest

from sentiment_core import http
from sentiment_core.records import InvalidPageToken, decode_page_token
from sentiment_core.tokens import feedback_token, verify_feedback_token

APP = flask.Flask(__name__)
SECRET = b"unit-secret-0123456789abcdef"
ID = "0123456789abcdef0123456789abcdef"


def read(raw: bytes) -> dict:
    with APP.test_request_context("/", method="POST", data=raw, content_type="application/json"):
        return http.read_json_object(flask.request)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"text": "\\ud800"}',
        b'{"text": "a\\uDBFFb"}',
        b'{"text": "\\udc00\\ud800"}',  # a low surrogate before a high one is no pair
        b'{"text": "\\ud83d"}',  # half an emoji
        b'{"\\udc00": 1}',
        b'{"a": {"\\udfff": null}}',
        b'{"a": [1, [2, ["\\ud800"]]]}',
        b'{"a": [{"b": [{"c": "x\\ud900y"}]}]}',
    ],
)
def test_read_json_object_lone_surrogate_anywhere_is_invalid_unicode(raw: bytes) -> None:
    with pytest.raises(http.ApiError) as error:
        read(raw)

    assert (error.value.status, error.value.code) == (400, "invalid_unicode")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"text": "\\ud83d\\ude00 great"}', {"text": "\U0001f600 great"}),  # a pair is one code point
        (b'{"text": "\\\\ud800"}', {"text": "\\ud800"}),  # an escaped backslash, then text: no surrogate
        ('{"text": "caf\u00e9 \U0001f600"}'.encode(), {"text": "caf\u00e9 \U0001f600"}),
        (b'{"text": "\\u00e9\\uD7FF\\uE000"}', {"text": "\u00e9\ud7ff\ue000"}),  # the neighbours of the range
    ],
)
def test_read_json_object_valid_unicode_is_decoded(raw: bytes, expected: dict) -> None:
    assert read(raw) == expected


def test_read_json_object_nesting_json_accepts_is_walked_without_recursion() -> None:
    depth = 900  # json.loads accepts this; a recursive walk on top of the request's frames might not
    raw = b'{"a": ' + b"[" * depth + b'"\\ud800"' + b"]" * depth + b"}"

    with pytest.raises(http.ApiError) as error:
        read(raw)

    assert error.value.code == "invalid_unicode"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("unknown_field", "unknown field(s): \udc00"),
        ("unknown_field", "unknown field(s): a\ud800\udfffb"),
        ("bad\udc00code", "plain"),
    ],
)
def test_error_response_unencodable_text_is_escaped_as_json(code: str, message: str) -> None:
    with APP.test_request_context("/"):
        response = http.error_response(http.ApiError(400, code, message))
        body = json.loads(response.get_data())  # strict UTF-8: the default of get_data's consumers

    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert "\\ud" in body["error"]["message"] + body["error"]["code"]
    assert not http.has_lone_surrogate(body)


def test_error_response_unsendable_header_is_a_json_500() -> None:
    with APP.test_request_context("/"):
        response = http.error_response(http.ApiError(400, "x", "y", {"Retry-After": "5\nSet-Cookie: a=b"}))

    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert json.loads(response.get_data())["error"]["code"] == "internal"
    assert "Set-Cookie" not in response.headers


def token(time: str, prediction_id: str = ID) -> str:
    raw = json.dumps({"t": time, "id": prediction_id}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "value",
    [
        token("9999-12-31T23:59:59-14:00"),  # later than the last UTC time a datetime holds
        token("0001-01-01T00:00:00+14:00"),  # earlier than the first
        token("2026-01-01T00:00:00", "\ud800" * 32),
        token("2026-13-01T00:00:00"),
        base64.urlsafe_b64encode(b'["t", "id"]').decode(),
        base64.urlsafe_b64encode(b'"t"').decode(),
        base64.urlsafe_b64encode(b'{"t": 5, "id": 5}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "\u00e9t\u00e9",
        "\ud800",
    ],
)
def test_decode_page_token_malformed_is_invalid_page_token(value: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(value)


def test_decode_page_token_extreme_but_valid_time_is_decoded() -> None:
    assert decode_page_token(token("9999-12-31T23:59:59+00:00")) == (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), ID)


@pytest.mark.parametrize("value", ["\ud800", "\u00e9" * 43, "", "x" * 43])
def test_verify_feedback_token_wrong_or_unencodable_is_false(value: str) -> None:
    assert verify_feedback_token(SECRET, ID, value) is False


def test_verify_feedback_token_issued_token_is_true() -> None:
    assert verify_feedback_token(SECRET, ID, feedback_token(SECRET, ID)) is True
