"""The local scheduler's log line: the watcher's answer in words, "no production version" rather than "None"."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from localdev.scheduler import describe, tick

NOTHING = {
    "action": "no_production_version",
    "desired_version": None,
    "target_version": None,
    "serving_version": None,
    "detail": "no version of yelp-sentiment has alias production or stage Production; no version is in service",
    "event_id": None,
}


@pytest.mark.parametrize(
    ("status", "answer", "line"),
    [
        (200, NOTHING, f"200 no_production_version: no production version, nothing serving ({NOTHING['detail']})"),
        (
            200,
            {**NOTHING, "action": "up_to_date", "desired_version": "3", "serving_version": "3", "detail": ""},
            "200 up_to_date: production version 3, serving version 3",
        ),
        (
            200,
            {**NOTHING, "action": "published", "desired_version": "4", "serving_version": "3", "detail": ""},
            "200 published: production version 4, serving version 3",
        ),
        (
            503,
            {"error": {"code": "registry_unavailable", "message": "MLflow did not answer"}},
            "503 registry_unavailable: MLflow did not answer",
        ),
        (502, "<html>Bad Gateway</html>", "502 <html>Bad Gateway</html>"),
    ],
    ids=["nothing-promoted", "up-to-date", "published", "error", "not-json"],
)
def test_scheduler_describe_says_what_the_tick_did_in_words(status: int, answer, line: str) -> None:
    body = answer if isinstance(answer, str) else json.dumps(answer)

    assert describe(status, body) == line


@pytest.fixture
def watcher_answering_nothing_promoted() -> Iterator[str]:
    """A real HTTP server answering a tick as the watcher does when no version was ever promoted."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps(NOTHING).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scheduler_tick_with_nothing_promoted_logs_no_production_version_not_none(
    watcher_answering_nothing_promoted: str,
) -> None:
    line = tick(watcher_answering_nothing_promoted, timeout_s=5)

    assert line.startswith("200 no_production_version: no production version, nothing serving")
    assert "None" not in line
