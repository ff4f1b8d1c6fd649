"""The local stand-in for Cloud Run's traffic switch: one stable URL in front of `predict` processes.

`python -m localdev.router --port P --admin-port A --workdir DIR [--model-uri URI]`

- Port P proxies every request to the current revision (a functions-framework `predict` process).
- `POST http://127.0.0.1:A/revisions {"model_uri", "model_version"}` starts a new revision on that model, waits
  until its /healthz reports the version, switches traffic to it, lets the old revision finish the requests it
  holds, then stops it: the page never sees an error. `GET /revisions` says what serves.
- SIGTERM stops every revision it started.

The environment of the router (Firestore emulator, secrets, ...) is the environment of every revision.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localdev import services

logger = logging.getLogger("localdev.router")

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
MAX_BODY = 1 << 20
DRAIN_TIMEOUT_S = 30.0


@dataclasses.dataclass
class Revision:
    name: str
    model_uri: str
    model_version: str
    service: services.Service
    in_flight: int = 0


class Router:
    """The current revision, switched atomically; in-flight counts let an old revision drain before it stops."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._lock = threading.Lock()
        self._deploy_lock = threading.Lock()  # one revision change at a time, like Cloud Run's operations
        self._current: Revision | None = None
        self._count = 0

    @property
    def current(self) -> Revision | None:
        return self._current

    def acquire(self) -> Revision | None:
        with self._lock:
            if self._current is not None:
                self._current.in_flight += 1
            return self._current

    def release(self, revision: Revision) -> None:
        with self._lock:
            revision.in_flight -= 1

    def deploy(self, model_uri: str, model_version: str) -> Revision:
        with self._deploy_lock:
            self._count += 1
            name = f"predict-{self._count:05d}"
            env = {**os.environ, "MODEL_URI": model_uri}
            # Up means answering at all: a revision whose model cannot load answers 503, and fails at once below.
            service = services.start_function("predict", self.workdir, env, ready_any_status=True)
            revision = Revision(name, model_uri, model_version, service)
            try:
                reported = _healthz(service.url).get("model_version")
                if model_version and reported != model_version:
                    raise RuntimeError(f"{name} serves version {reported!r}, not {model_version!r}")
            except Exception:
                service.stop()
                raise
            with self._lock:
                old, self._current = self._current, revision
            logger.info("%s (version %s) takes all traffic", name, model_version)
            self._record(revision, old)
            if old is not None:
                self._drain(old)
                self._record(revision)
            return revision

    def _record(self, *revisions: Revision | None) -> None:
        """The live revisions' process groups, so `make down` can stop them even if the router was killed."""
        pids = {r.name: r.service.pid for r in revisions if r is not None}
        (self.workdir / "revisions.json").write_text(json.dumps(pids))

    def _drain(self, old: Revision) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while old.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        old.service.stop()
        logger.info("%s drained and stopped", old.name)

    def stop(self) -> None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.service.stop()


def _healthz(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}/healthz answered {exc.code}: {exc.read()[:300]!r}") from exc


def _read_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    """The request body, de-chunked; None if it is over MAX_BODY."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body
            body += handler.rfile.read(size)
            handler.rfile.readline()
            if len(body) > MAX_BODY:
                return None
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY:
        return None
    return handler.rfile.read(length) if length else b""


def _send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)


def proxy_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _forward(self) -> None:
            body = _read_body(self)
            if body is None:
                self.close_connection = True
                return _send_json(self, 413, {"error": {"code": "body_too_large", "message": "body too large"}})
            revision = router.acquire()
            if revision is None:
                unavailable = {"code": "no_revision", "message": "no model version is deployed yet"}
                return _send_json(self, 503, {"error": unavailable}, {"Retry-After": "5"})
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                headers["Content-Length"] = str(len(body))
                headers["X-Forwarded-For"] = self.client_address[0]
                host, port = revision.service.url.removeprefix("http://").split(":")
                upstream = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
            except (OSError, http.client.HTTPException) as exc:
                logger.error("revision %s failed: %s", revision.name, exc)
                return _send_json(self, 502, {"error": {"code": "bad_gateway", "message": str(exc)}})
            finally:
                router.release(revision)
            self.send_response(response.status)  # writes this server's own Server and Date headers
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _forward

    return Proxy


def admin_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    class Admin(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _describe(self) -> dict[str, Any]:
            current = router.current
            if current is None:
                return {"revision": None}
            return {
                "revision": current.name,
                "model_uri": current.model_uri,
                "model_version": current.model_version,
                "url": current.service.url,
                "pid": current.service.pid,
            }

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/revisions"):
                return _send_json(self, 200, {"status": "ok", **self._describe()})
            return _send_json(self, 404, {"error": {"code": "not_found", "message": self.path}})

        def do_POST(self) -> None:
            if self.path != "/revisions":
                return _send_json(self, 404, {"error": {"code": "not_found", "message": self.path}})
            try:
                request = json.loads(_read_body(self) or b"{}")
                model_uri, version = str(request["model_uri"]), str(request["model_version"])
            except (ValueError, KeyError, TypeError):
                invalid = {"code": "invalid_request", "message": "give model_uri and model_version"}
                return _send_json(self, 400, {"error": invalid})
            try:
                revision = router.deploy(model_uri, version)
            except Exception as exc:  # the old revision keeps serving; say why the new one did not start
                logger.error("revision on %s failed to start: %s", model_uri, exc)
                return _send_json(self, 500, {"error": {"code": "revision_failed", "message": str(exc)}})
            return _send_json(self, 201, {"revision": revision.name, "url": revision.service.url})

    return Admin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the stable public port of predict")
    parser.add_argument("--admin-port", type=int, required=True, help="the port of the revision API")
    parser.add_argument("--workdir", type=Path, required=True, help="where revisions write their logs")
    parser.add_argument("--model-uri", help="serve this staged folder at once")
    parser.add_argument("--model-version", help="the version --model-uri holds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)

    router = Router(args.workdir)
    public = ThreadingHTTPServer(("127.0.0.1", args.port), proxy_handler(router))
    admin = ThreadingHTTPServer(("127.0.0.1", args.admin_port), admin_handler(router))
    public.daemon_threads = admin.daemon_threads = True

    def shutdown(*_: object) -> None:
        threading.Thread(target=lambda: (public.shutdown(), admin.shutdown()), daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if args.model_uri:
        router.deploy(args.model_uri, args.model_version or "")
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    try:
        public.serve_forever()
    finally:
        router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
