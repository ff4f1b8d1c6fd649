"""Every function's boundary through the real framework (`create_app(...).test_client()`): what the framework
itself refuses before an entry point runs is JSON too, and generated hostile input never gets a 5xx or HTML.

Two tiers. The unit tests build all four functions with settings only (no server is ever reached: they send only
what is refused before any client is used). The system tests fuzz the bodies and query strings of predict and
feedback all the way to the Firestore emulator, where a valid request is stored like any other.
"""

from __future__ import annotations

import base64
import json
import os
import string
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localdev.services import FUNCTIONS_DIR
from tests.support import SECRET

# Settings each function needs to start; every address is a closed port, which these tests never reach.
NOWHERE = "127.0.0.1:9"
BASE_ENV = {
    "GOOGLE_CLOUD_PROJECT": "demo-boundary",
    "FEEDBACK_TOKEN_SECRET": SECRET,
    "FIRESTORE_EMULATOR_HOST": NOWHERE,
}
UNIT_ENV = {
    "predict": {"MODEL_URI": "/nonexistent/model"},
    "feedback": {},
    "registry_watcher": {
        "MLFLOW_TRACKING_URI": f"http://{NOWHERE}",
        "MLFLOW_WEBHOOK_SECRET": "webhook-secret-0123456789abcdef",
        "SERVING_BUCKET": "serving",
        "EVAL_SET_URI": "gs://eval-sets/yelp-sentiment/eval.jsonl",  # read at the first candidate, never here
    },
    "redeploy": {
        "DEPLOYER": "local",
        "SERVING_BUCKET": "serving",
        "LOCAL_ROUTER_URL": f"http://{NOWHERE}",
        "LOCAL_PREDICT_URL": f"http://{NOWHERE}",
        # The first delivery creates the Firestore client: with unreadable credentials that fails at once.
        "FIRESTORE_EMULATOR_HOST": "",
        "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/credentials.json",
    },
}
TARGETS = {"predict": "predict", "feedback": "feedback", "registry_watcher": "registry_watcher"}
TARGETS["redeploy"] = "on_production_changed"
# The routes each function serves (any method): the unit tests' fuzz keeps away from them, they would use a client.
ROUTES = {
    "predict": {"/", "/healthz"},
    "feedback": {"/", "/statistics", "/predictions", "/monitoring"},
    "registry_watcher": {"/", "/webhook", "/status", "/rollout"},
}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def create(name: str, env: dict[str, str]) -> Any:
    """One function's Flask app, its settings read from `env` (the process environment is restored after)."""
    import functions_framework

    saved = dict(os.environ)
    os.environ.update(env)
    for key in [k for k, v in env.items() if not v]:
        del os.environ[key]
    try:
        return functions_framework.create_app(TARGETS[name], str(FUNCTIONS_DIR / name / "main.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def unit_apps() -> dict[str, Any]:
    return {name: create(name, BASE_ENV | env) for name, env in UNIT_ENV.items()}


def assert_json_error(response: Any, status: int | None = None, code: str | None = None) -> dict:
    """A JSON error of the contract's shape, strict UTF-8 without lone surrogates, never an HTML page."""
    text = response.get_data().decode("utf-8")
    assert response.mimetype == "application/json", text[:300]
    body = json.loads(text)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # no lone surrogate came back either
    if status is not None:
        assert (response.status_code, body["error"]["code"]) == (status, code), body
    return body


FRAMEWORK_CASES = [
    # (case id, method, path, status, code): refused by the framework's routing before the entry point runs
    ("newline-in-segment", "GET", "/a%0Ab", 404, "not_found"),
    ("trailing-newline", "GET", "/status%0A", 404, "not_found"),
    ("only-newlines", "POST", "/%0A%0A", 404, "not_found"),
    ("nested-newline", "GET", "/a/%0A", 404, "not_found"),
    ("robots", "GET", "/robots.txt", 404, "not_found"),
    ("favicon", "GET", "/favicon.ico", 404, "not_found"),
]


@pytest.mark.parametrize("name", ["predict", "feedback", "registry_watcher"])
@pytest.mark.parametrize(
    ("method", "path", "status", "code"), [c[1:] for c in FRAMEWORK_CASES], ids=[c[0] for c in FRAMEWORK_CASES]
)
def test_http_function_framework_refusal_is_json_error(unit_apps, name, method, path, status, code) -> None:
    response = unit_apps[name].test_client().open(path, method=method)

    assert_json_error(response, status, code)


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "code"),
    [
        ("GET", "/", None, None, 405, "method_not_allowed"),
        ("PUT", "/x", b"{}", "application/json", 405, "method_not_allowed"),
        ("GET", "/a%0Ab", None, None, 404, "not_found"),
        ("POST", "/", b"not an event", "text/plain", 415, "unsupported_media_type"),
        ("POST", "/", b"{}", "application/json", 400, "bad_request"),
        ("POST", "/", b"{not json", "application/cloudevents+json", 400, "bad_request"),
        # A CloudEvent whose data is no push envelope.
        (
            "POST",
            "/",
            b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": [1]}',
            "application/cloudevents+json",
            400,
            "invalid_event",
        ),
        ("POST", "/", b'{"specversion": "1.0"}', "application/cloudevents+json", 400, "bad_request"),
        # A push whose message is not an event of this system: refused (and, from Pub/Sub, dead-lettered).
        (
            "POST",
            "/",
            b'{"message": {"data": "e30=", "messageId": "1"}, "subscription": "s"}',
            "application/json",
            400,
            "invalid_event",
        ),
    ],
)
def test_redeploy_refused_delivery_is_json_error(unit_apps, method, path, body, content_type, status, code) -> None:
    response = unit_apps["redeploy"].test_client().open(path, method=method, data=body, content_type=content_type)

    body = assert_json_error(response, status, code)
    assert "not an event" not in body["error"]["message"]  # the framework's description echoes the request


def test_redeploy_unexpected_failure_is_json_500_marked_crash(unit_apps) -> None:
    """A valid event whose processing fails (here the state store's client cannot be created): Pub/Sub must see a
    failure to deliver again, and the platform a crash; the body is still the contract's JSON."""
    event = {
        "event_id": "e-1",
        "model_name": "yelp-sentiment",
        "model_version": "2",
        "mlflow_run_id": "r",
        "model_uri": "gs://serving/yelp-sentiment/v2/",
        "sha256": "0" * 64,
        "previous_version": "1",
    }
    push = {
        "message": {
            "data": base64.b64encode(json.dumps(event).encode()).decode(),
            "attributes": {"model_name": "yelp-sentiment", "model_version": "2"},
            "messageId": "m-1",
        },
        "subscription": "projects/demo-boundary/subscriptions/redeploy",
    }

    response = unit_apps["redeploy"].test_client().post("/", json=push)

    assert_json_error(response, 500, "internal")
    assert response.headers["X-Google-Status"] == "crash"


# Path segments: any text, controls and separators included, percent-encoded as a client would send them.
segments = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
raw_paths = st.lists(segments, min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)
)
odd_bytes = st.binary(min_size=1, max_size=8).map(lambda b: "/x" + "".join(f"%{c:02X}" for c in b))
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW", "get"])


def wsgi_path(path: str) -> dict[str, str]:
    """PATH_INFO as a server passes it (decoded bytes as latin-1): the test client would read `//host/...` as a
    URL with a host."""
    return {"PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1")}


def routed(name: str, path: str) -> bool:
    decoded = urllib.parse.unquote(path, errors="replace")
    return name != "redeploy" and "/" + decoded.strip("/") in ROUTES[name]


@FUZZ
@given(
    name=st.sampled_from(sorted(UNIT_ENV)),
    path=st.one_of(raw_paths, odd_bytes, st.just("/robots.txt")),
    method=methods,
    query=st.dictionaries(segments, segments, max_size=3).map(urllib.parse.urlencode),
)
def test_any_function_fuzzed_path_and_method_is_json_4xx(unit_apps, name, path, method, query) -> None:
    if routed(name, path) or (name == "redeploy" and method == "POST"):
        return  # served: reaching the function's clients is the system tests' part
    response = unit_apps[name].test_client().open(method=method, query_string=query, environ_overrides=wsgi_path(path))

    if method == "HEAD":  # a HEAD answer has no body to inspect
        assert 400 <= response.status_code < 500
    else:
        assert 400 <= response.status_code < 500, response.get_data()[:300]
        assert_json_error(response)


# JSON values with any text, lone surrogates included: json.dumps escapes them as \udXXX, as a hostile client would.
# Half the texts may hold surrogates, drawn on purpose: Hypothesis' own characters() almost never yields one.
any_text = st.text(max_size=20) | st.text(alphabet=st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def served_apps(function_env: dict) -> Iterator[dict[str, Any]]:
    """predict and feedback on the trained model and the Firestore emulator; each creates its store client in
    the warm-up, while the emulator's address is in the environment."""
    # A slow emulator on a loaded machine is not what these tests look for: a 503 here would mean a store timeout.
    env = function_env | {"FIRESTORE_TIMEOUT_S": "30"}
    apps = {"predict": create("predict", env)}
    predict_main = sys.modules["main"]  # feedback's main.py takes this name next
    apps["feedback"] = create("feedback", env)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        warm = apps["predict"].test_client().post("/", json={"text": "warm up"})
        assert warm.status_code == 201, warm.get_data()
        assert apps["feedback"].test_client().get("/statistics").status_code == 200
    finally:
        os.environ.clear()
        os.environ.update(saved)
    apps["prediction"] = warm.get_json()
    yield apps
    predict_main._store().close()  # its keep-alive connection to the emulator


def assert_served(response: Any) -> None:
    """Anything but a server error; JSON; an error of the contract's shape when it is one."""
    assert response.status_code < 500, response.get_data()[:500]
    if response.status_code >= 400:
        assert_json_error(response)
    elif response.status_code != 204:
        assert response.mimetype == "application/json"
        json.loads(response.get_data().decode("utf-8"))


def encoded(value: Any, ascii_only: bool) -> bytes:
    """The body as sent: escaped (lone surrogates as \\udXXX), or raw (then they cannot be UTF-8: surrogatepass)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


predict_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"text": json_values}),
    st.fixed_dictionaries(
        {"text": any_text}, optional={"is_positive_user_answered": json_values, "explain": json_values}
    ),
    st.fixed_dictionaries({"texts": st.lists(st.one_of(any_text, json_values), max_size=4)}),
    st.dictionaries(any_text, json_values, max_size=4),
)
latin1_header = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=70
)


@FUZZ
@given(body=predict_bodies, ascii_only=st.booleans(), key=st.none() | latin1_header)
def test_predict_fuzzed_body_is_never_a_server_error(served_apps, body, ascii_only, key) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}

    response = (
        served_apps["predict"]
        .test_client()
        .post("/", data=encoded(body, ascii_only), content_type="application/json", headers=headers)
    )

    assert_served(response)


KNOWN = "known"  # stands for the warm-up's prediction id, or its token: a valid pair reaches the store


@FUZZ
@given(
    prediction_id=st.one_of(st.sampled_from([KNOWN, "0" * 32]), json_values),
    answer=st.one_of(st.booleans(), json_values),
    token=st.one_of(
        st.just(KNOWN), json_values, st.text(alphabet=string.ascii_letters + "-_", min_size=43, max_size=43)
    ),
    extra=st.dictionaries(any_text, json_values, max_size=2),
    ascii_only=st.booleans(),
)
def test_feedback_fuzzed_body_is_never_a_server_error(
    served_apps, prediction_id, answer, token, extra, ascii_only
) -> None:
    known = served_apps["prediction"]
    body = {
        "prediction_id": known["id"] if prediction_id == KNOWN else prediction_id,
        "is_positive_user_answered": answer,
        "feedback_token": known["feedback_token"] if token == KNOWN else token,
    } | extra

    response = (
        served_apps["feedback"].test_client().post("/", data=encoded(body, ascii_only), content_type="application/json")
    )

    assert_served(response)


# Numbers that str.isdigit() or int() read otherwise than a pattern of ASCII digits does, and plain ones.
ODD_NUMBERS = [
    "\u00b2",
    "\u00b9\u00b2",
    "\u2070",
    "\u00b3",
    "\u0661",
    "\uff15",
    "\U0001d7d3",
    "1e2",
    "0x10",
    " 5",
    "5\n",
]
ODD_NUMBERS += ["+5", "-0", "", "007", "1_0"]
query_values = st.sampled_from(ODD_NUMBERS) | st.integers(-5, 500).map(str) | segments
NUMBER_PARAMETER = {"/predictions": "limit", "/monitoring": "hours", "/statistics": "limit"}
# Page tokens of the issued shape: the edges of what a datetime holds, in the zones that take them out of UTC's
# range, or any time in any zone.
EDGE_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999+00:00"]
page_times = st.sampled_from(EDGE_TIMES) | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())


@FUZZ
@given(
    route=st.sampled_from(["/predictions", "/monitoring", "/statistics"]),
    number=st.none() | query_values,
    extra=st.lists(st.tuples(st.sampled_from(["limit", "page_token", "hours"]) | segments, query_values), max_size=2),
    page_time=st.none() | page_times,
)
def test_feedback_fuzzed_query_is_never_a_server_error(served_apps, route, number, extra, page_time) -> None:
    params = ([(NUMBER_PARAMETER[route], number)] if number is not None else []) + extra
    if page_time is not None:
        raw = json.dumps({"t": page_time, "id": "0" * 32}).encode()
        params.append(("page_token", base64.urlsafe_b64encode(raw).rstrip(b"=").decode()))

    response = served_apps["feedback"].test_client().get(route, query_string=urllib.parse.urlencode(params))

    assert_served(response)
