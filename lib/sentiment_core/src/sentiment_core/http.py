"""The HTTP boundary shared by the public functions: strict JSON in, JSON out, CORS, stable error codes.

Everything a client can get wrong is answered here with a 4xx and a stable `code`; handlers only see
validated values. Nothing here imports Firestore or the model, so it costs nothing at cold start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import flask
from werkzeug.exceptions import HTTPException, InternalServerError

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 5000
_ALLOWED_CONTROLS = {"\t", "\n"}


class ApiError(Exception):
    """A response other than success: status, stable snake_case code, human message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def jsonable(value: Any) -> Any:
    """Stored values (Firestore documents, dataclasses as dicts) as JSON: timestamps as RFC 3339 strings."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return value


def unavailable(code: str, exc: Exception, log: logging.Logger) -> ApiError:
    """A dependency that failed (MLflow, Firestore, a Google API): 503 with a stable code, logged as an error; the
    caller may retry after a minute, as the scheduler does anyway."""
    log.error("%s: %s", code, exc)
    return ApiError(503, code, str(exc), {"Retry-After": "60"})


def read_json_object(request: flask.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object: bounded read (also for chunked bodies), UTF-8, no NaN, no duplicate keys, and
    no lone surrogate in any key or string at any depth."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "body_too_large", f"the body must be at most {max_bytes} bytes")
    # Read one byte past the limit from the (de-chunked) stream: a chunked body has no Content-Length to trust.
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, "body_too_large", f"the body must be at most {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request("invalid_encoding", "the body must be UTF-8") from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except RecursionError as exc:
        raise bad_request("invalid_json", "the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and the hooks' errors
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise bad_request("invalid_json", "the body must be a JSON object")
    # A \uD800-\uDFFF escape without its pair is valid JSON syntax but not Unicode: such a string cannot be
    # encoded (hashed, stored, echoed in an error), so it is refused here, before any handler sees it. Only an
    # escape can carry one (the raw bytes were strict UTF-8), hence the cheap test before the walk.
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise bad_request("invalid_unicode", "the body contains a \\u escape of a lone surrogate (U+D800 to U+DFFF)")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def has_lone_surrogate(value: Any) -> bool:
    """True when a key or string anywhere in a decoded JSON value holds a code point U+D800 to U+DFFF.

    Iterative: a value json.loads accepted may be nested deeper than the recursion limit leaves room for.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def check_fields(body: Mapping[str, Any], required: Mapping[str, type], optional: Mapping[str, type] = {}) -> None:
    """Unknown fields, missing fields and wrong types are 400s; bool is never accepted as a number or vice versa."""
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise bad_request("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    for name in required:
        if name not in body:
            raise bad_request("missing_field", f"{name} is required")
    for name, expected in {**required, **optional}.items():
        if name in body and not is_type(body[name], expected):
            raise bad_request("invalid_type", f"{name} must be {_type_name(expected)}")


def is_type(value: Any, expected: type) -> bool:
    """isinstance without Python's bool-is-an-int surprise."""
    if expected is bool:
        return isinstance(value, bool)
    if expected in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: type) -> str:
    return {bool: "a boolean", str: "a string", list: "an array", int: "a number", float: "a number"}.get(
        expected, expected.__name__
    )


def clean_text(value: str, field: str = "text") -> str:
    """Trimmed review text: 1-5,000 characters, no controls but tab and newline, no lone surrogates."""
    text = value.strip()
    if not text:
        raise bad_request("invalid_text", f"{field} must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        raise bad_request("invalid_text", f"{field} must be at most {MAX_TEXT_CHARS} characters")
    for char in text:
        category = unicodedata.category(char)
        if category == "Cs":
            raise bad_request("invalid_text", f"{field} contains a lone surrogate")
        if category == "Cc" and char not in _ALLOWED_CONTROLS:
            raise bad_request("invalid_text", f"{field} contains control character U+{ord(char):04X}")
    return text


def check_pattern(value: str, pattern: re.Pattern[str], field: str, code: str = "invalid_id") -> str:
    """Ids are checked by shape before anything looks them up."""
    if not pattern.fullmatch(value):
        raise bad_request(code, f"{field} is not well formed")
    return value


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> flask.Response:
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    response = flask.Response(body, status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def error_response(error: ApiError) -> flask.Response:
    """The error as JSON; it cannot fail, because it is what answers every other failure.

    A message may quote what the client sent (an unknown field's name): whatever UTF-8 cannot carry is escaped
    as text (`\\udc00`), and if the answer still cannot be built, a fixed 500 body goes out instead.
    """
    payload = {"error": {"code": _printable(error.code), "message": _printable(error.message)}}
    try:
        return json_response(payload, error.status, error.headers)
    except Exception:  # e.g. a header value with a newline: nothing a client could send, but never an HTML page
        return flask.Response(_INTERNAL_BODY, status=500, mimetype="application/json")


_INTERNAL_BODY = '{"error":{"code":"internal","message":"internal error"}}'


def _printable(text: str) -> str:
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


# The codes the routing of functions-framework (Werkzeug) can raise before an entry point runs, named as
# dispatch names them; any other HTTP error gets its standard name in snake_case.
_FRAMEWORK_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def framework_error_response(error: HTTPException) -> flask.Response:
    """JSON for an error raised by the framework around the entry point: routing (a path the framework's rules
    do not match, /robots.txt), a method the rules refuse, an event that is not a CloudEvent.

    The framework's description is not echoed: for a refused event it repeats the request's headers and body.
    """
    status = error.code or 500
    if status == 500:
        return internal_error_response(error)
    code = _FRAMEWORK_CODES.get(status) or re.sub(r"[^a-z]+", "_", (error.name or "error").lower()).strip("_")
    if status == 404:
        message = f"no route {flask.request.path}"
    elif status == 405:
        message = f"{flask.request.method} is not allowed on {flask.request.path}"
    else:
        message = error.name or "the request cannot be served"
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}  # Allow on a 405
    return error_response(ApiError(status, code or "error", message, headers))


def internal_error_response(error: BaseException) -> flask.Response:
    """JSON for an exception that escaped the entry point (Flask has already logged it with its stack trace).

    `X-Google-Status: crash` is the header functions-framework's own 500 handler sets, so the platform still
    records the request as a crash.
    """
    response = error_response(ApiError(500, "internal", "internal error"))
    response.headers["X-Google-Status"] = "crash"
    return response


def register_error_handlers(errorhandler: Callable[..., Any]) -> None:
    """Answer every error of a function's Flask app as JSON (pass `functions_framework.errorhandler`).

    Called from a function's main.py while functions-framework imports it inside the app it creates; outside
    such an import (a bundle imported on its own) the framework's placeholder ignores the registrations.
    """
    errorhandler(HTTPException)(framework_error_response)
    # Replaces the framework's own 500 handler (plain text): an exception that escapes the entry point.
    errorhandler(InternalServerError)(internal_error_response)


@dataclasses.dataclass(frozen=True)
class Cors:
    """Access-Control-Allow-Origin only for the configured origins; preflight answered here."""

    allowed_origins: frozenset[str]
    max_age_s: int = 3600

    @classmethod
    def from_setting(cls, value: str) -> Cors:
        return cls(frozenset(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()))

    def headers(self, request: flask.Request) -> dict[str, str]:
        origin = request.headers.get("Origin", "")
        if origin and ("*" in self.allowed_origins or origin in self.allowed_origins):
            # A page reads these only if they are exposed (CORS hides non-safelisted headers): Idempotent-Replayed,
            # and Retry-After, which the page waits out before it retries.
            return {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Idempotent-Replayed, Retry-After",
            }
        return {}

    def preflight(self, request: flask.Request, allow: str) -> flask.Response:
        response = flask.Response(status=204)
        if self.headers(request):
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": allow,
                    "Access-Control-Allow-Headers": "Content-Type, Idempotency-Key",
                    "Access-Control-Max-Age": str(self.max_age_s),
                }
            )
        return response


Handler = Callable[[flask.Request], flask.Response]


def dispatch(
    request: flask.Request,
    routes: Mapping[str, Mapping[str, Handler]],
    cors: Cors,
    on_unexpected: Callable[[BaseException], None],
) -> flask.Response:
    """Route by path then method; every answer gets CORS, Vary: Origin and nosniff; no exception escapes."""
    path = "/" + request.path.strip("/")
    methods = routes.get(path)
    try:
        if methods is None:
            raise ApiError(404, "not_found", f"no route {path}")
        allow = ", ".join([*sorted(methods), "OPTIONS"])
        if request.method == "OPTIONS":
            response = cors.preflight(request, allow)
            response.headers["Allow"] = allow
        elif request.method not in methods:
            raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed on {path}", {"Allow": allow})
        else:
            response = methods[request.method](request)
    except ApiError as error:
        response = error_response(error)
    except Exception as exc:  # the last line of defence: a JSON 500, never an HTML page or a stack trace
        on_unexpected(exc)
        response = error_response(ApiError(500, "internal", "internal error"))
    response.headers.update(cors.headers(request))
    response.headers["Vary"] = "Origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def finite_number(value: float) -> float:
    """Probabilities go out as JSON numbers; a NaN would make the response invalid JSON."""
    if not math.isfinite(value):
        raise ApiError(
            503,
            "model_unavailable",
            "the model returned a non-finite value; nothing was stored, retrying is safe",
            {"Retry-After": "5"},
        )
    return value
