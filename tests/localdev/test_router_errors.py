"""The local router's own answers to requests it cannot read: JSON of the functions' shape, never the standard
library's HTML page or a dropped connection. No revision is started: what is refused never reaches one."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from localdev.router import Router, admin_handler, proxy_handler


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    router = Router(Path(tmp_path_factory.mktemp("router")))
    started = {}
    threads = []
    for name, handler in (("proxy", proxy_handler(router)), ("admin", admin_handler(router))):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started[name] = server
        threads.append(thread)
    try:
        yield {name: server.server_address[1] for name, server in started.items()}
    finally:
        for server in started.values():
            server.shutdown()
            server.server_close()


def exchange(port: int, raw: bytes) -> tuple[int, str, dict]:
    """Send raw bytes; the status, Content-Type and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        connection.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("Content-Type", ""), json.loads(body)


@pytest.mark.parametrize(
    ("server", "raw", "status", "code"),
    [
        ("proxy", b"GARBAGE\r\n\r\n", 400, "bad_request"),
        ("proxy", b"GET / HTTP/9.9\r\n\r\n", 505, "http_version_not_supported"),
        ("proxy", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "request_uri_too_long"),
        ("proxy", b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
        ("proxy", "POST / HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n{}".encode(), 400, "bad_request"),
        ("proxy", b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}", 400, "bad_request"),
        ("proxy", b"POST / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n{}", 400, "bad_request"),
        ("proxy", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
        # Forwarded like any method (nothing is deployed here, hence the router's own 503 rather than a 501 page).
        ("proxy", b"BREW / HTTP/1.1\r\n\r\n", 503, "no_revision"),
        ("admin", b"BREW /revisions HTTP/1.1\r\n\r\n", 405, "method_not_allowed"),
        ("admin", b"GARBAGE\r\n\r\n", 400, "bad_request"),
        ("admin", b"GET /nowhere HTTP/1.1\r\n\r\n", 404, "not_found"),
    ],
    ids=[
        "bad-request-line",
        "bad-version",
        "uri-too-long",
        "header-too-long",
        "superscript-length",
        "negative-length",
        "float-length",
        "bad-chunk-size",
        "unknown-method-forwarded",
        "admin-unknown-method",
        "admin-bad-request-line",
        "admin-unknown-path",
    ],
)
def test_router_unreadable_request_is_json_error(servers, server: str, raw: bytes, status: int, code: str) -> None:
    answer_status, content_type, body = exchange(servers[server], raw)

    assert (answer_status, body["error"]["code"]) == (status, code), body
    assert content_type == "application/json"
    assert set(body["error"]) == {"code", "message"}
