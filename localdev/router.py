"""The local stand-in for Cloud Run's traffic: one stable URL in front of one or two `predict` processes.

`python -m localdev.router --port P --admin-port A --workdir DIR [--model-uri URI]`

- Port P proxies every request to the current revision (a functions-framework `predict` process).
- `POST http://127.0.0.1:A/revisions {"model_uri", "model_version", "sha256"?}` starts a new revision on that model
  (with `sha256`, its MODEL_SHA256: the revision serves only a model file with that sha256), waits
  until its /healthz reports the version, switches traffic to it, lets the old revision finish the requests it
  holds, then stops it: the page never sees an error. `GET /revisions` says what serves.
- With `"percent": P` (0 to 99) the new revision is a candidate instead: it gets P% of the requests and the
  serving (stable) revision the rest. `PUT /traffic {"stable", "candidate", "percent"}` moves the share;
  `PUT /traffic {"revision"}` gives that revision all traffic (complete, or roll back) and drains and stops the
  other one. Each is idempotent; a change that names revisions that are not live is a 409.
- SIGTERM stops every revision it started.
- Like Google's load balancer it appends `<client-ip>,<its-own-ip>` to X-Forwarded-For (forwarded_for): predict
  finds the client's address where it finds it in the cloud. A test acts as many clients by connecting from
  many loopback addresses (127.0.0.2, 127.0.0.3, ...), not by writing the header.

The environment of the router (Firestore emulator, secrets, ...) is the environment of every revision.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import logging
import os
import re
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
SHA256 = re.compile(r"[0-9a-f]{64}")
DRAIN_TIMEOUT_S = 30.0


@dataclasses.dataclass
class Revision:
    name: str
    model_uri: str
    model_version: str
    service: services.Service
    in_flight: int = 0
    sha256: str | None = None


class Conflict(RuntimeError):
    """The traffic change names revisions that are not live, or a candidate is already live: a 409."""


class Router:
    """One or two live revisions and their shares, changed atomically; in-flight counts let a revision that lost
    its traffic drain before it stops.

    The stable revision comes first; a candidate beside it gets `percent` of the requests by smooth weighted
    round robin (the nginx scheme): deterministic, and within one request of the exact share over any run of
    requests, so a test can assert the counts rather than hope a random draw lands near them.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._lock = threading.Lock()
        self._deploy_lock = threading.Lock()  # one revision change at a time, like Cloud Run's operations
        self._live: list[Revision] = []  # the stable revision, then the candidate if there is one
        self._weights: dict[str, int] = {}
        self._credit: dict[str, int] = {}
        self._count = 0

    @property
    def current(self) -> Revision | None:
        """The stable revision."""
        live = self._live
        return live[0] if live else None

    def traffic(self) -> list[tuple[Revision, int]]:
        """The live revisions and their percent, the stable one first."""
        with self._lock:
            return [(revision, self._weights[revision.name]) for revision in self._live]

    def acquire(self) -> Revision | None:
        with self._lock:
            if not self._live:
                return None
            for revision in self._live:
                self._credit[revision.name] += self._weights[revision.name]
            chosen = max(self._live, key=lambda r: self._credit[r.name])
            self._credit[chosen.name] -= 100
            chosen.in_flight += 1
            return chosen

    def release(self, revision: Revision) -> None:
        with self._lock:
            revision.in_flight -= 1

    def deploy(self, model_uri: str, model_version: str, sha256: str | None = None) -> Revision:
        """A new revision takes all traffic; every other one drains and stops."""
        with self._deploy_lock:
            revision = self._start(model_uri, model_version, sha256)
            self._take_all(revision)
            return revision

    def deploy_candidate(self, model_uri: str, model_version: str, percent: int, sha256: str | None = None) -> Revision:
        """A new revision beside the stable one gets `percent` of the requests; the same call again only sets
        the share (a redelivered event starts no second process)."""
        with self._deploy_lock:
            if not self._live:
                raise Conflict("no revision serves yet: deploy one before a candidate")
            if len(self._live) == 2:
                candidate = self._live[1]
                if (candidate.model_uri, candidate.model_version, candidate.sha256) != (
                    model_uri,
                    model_version,
                    sha256,
                ):
                    raise Conflict(f"{candidate.name} is already a candidate: complete or roll it back first")
                self._set_weights(self._live[0], candidate, percent)
                return candidate
            stable = self._live[0]
            candidate = self._start(model_uri, model_version, sha256)
            with self._lock:
                self._live = [stable, candidate]
                self._credit[candidate.name] = 0
                self._set_weights_locked(stable, candidate, percent)
            logger.info("%s (version %s) takes %d%% beside %s", candidate.name, model_version, percent, stable.name)
            self._record(stable, candidate)
            return candidate

    def set_split(self, stable: str, candidate: str, percent: int) -> None:
        with self._deploy_lock:
            names = [revision.name for revision in self._live]
            if names != [stable, candidate]:
                raise Conflict(f"the live revisions are {names}, not stable {stable} and candidate {candidate}")
            self._set_weights(self._live[0], self._live[1], percent)

    def take_all(self, name: str) -> Revision:
        """`name` (a live revision) takes all traffic; the other drains and stops. Completes or rolls back."""
        with self._deploy_lock:
            winner = next((revision for revision in self._live if revision.name == name), None)
            if winner is None:
                raise Conflict(f"{name} is not live (live: {[revision.name for revision in self._live]})")
            self._take_all(winner)
            return winner

    def _start(self, model_uri: str, model_version: str, sha256: str | None = None) -> Revision:
        self._count += 1
        name = f"predict-{self._count:05d}"
        env = {**os.environ, "MODEL_URI": model_uri}
        if sha256:
            env["MODEL_SHA256"] = sha256
        # Up means answering at all: a revision whose model cannot load (or differs from MODEL_SHA256) answers 503,
        # and fails at once below, before it gets any traffic.
        service = services.start_function("predict", self.workdir, env, ready_any_status=True)
        try:
            reported = _healthz(service.url).get("model_version")
            if model_version and reported != model_version:
                raise RuntimeError(f"{name} serves version {reported!r}, not {model_version!r}")
        except Exception:
            service.stop()
            raise
        return Revision(name, model_uri, model_version, service, sha256=sha256)

    def _set_weights(self, stable: Revision, candidate: Revision, percent: int) -> None:
        with self._lock:
            self._set_weights_locked(stable, candidate, percent)
        logger.info("%s takes %d%%, %s the rest", candidate.name, percent, stable.name)

    def _set_weights_locked(self, stable: Revision, candidate: Revision, percent: int) -> None:
        if self._weights.get(candidate.name) != percent:  # the same split again keeps the round robin's place
            self._weights[stable.name], self._weights[candidate.name] = 100 - percent, percent
            self._credit[stable.name] = self._credit[candidate.name] = 0

    def _take_all(self, winner: Revision) -> None:
        with self._lock:
            if self._live == [winner]:
                return  # already so: the same change applied again changes nothing
            losers = [revision for revision in self._live if revision is not winner]
            self._live = [winner]
            self._weights = {winner.name: 100}
            self._credit = {winner.name: 0}
        logger.info("%s (version %s) takes all traffic", winner.name, winner.model_version)
        self._record(winner, *losers)
        for loser in losers:  # out of the table already: no new request reaches it while it drains
            self._drain(loser)
        if losers:
            self._record(winner)

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
            live, self._live = self._live, []
        for revision in live:
            revision.service.stop()


def _healthz(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url}/healthz answered {exc.code}: {exc.read()[:300]!r}") from exc


class BadRequest(ValueError):
    """A request this server cannot read (its length or chunking): a 400, never a dropped connection."""


# Explicit ASCII patterns: int() also reads other scripts' digits, signs and spaces (and a negative length would
# make the read wait for the client to close).
CONTENT_LENGTH = re.compile(rb"[0-9]{1,12}")
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # an HTTP token


def _read_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    """The request body, de-chunked; None if it is over MAX_BODY; BadRequest if its framing is malformed."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_text = handler.rfile.readline(64).split(b";")[0].strip() or b"0"
            if not CHUNK_SIZE.fullmatch(size_text):
                raise BadRequest("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body
            body += handler.rfile.read(size)
            handler.rfile.readline()
            if len(body) > MAX_BODY:
                return None
    raw_length = (handler.headers.get("Content-Length") or "0").encode("latin-1")
    if not CONTENT_LENGTH.fullmatch(raw_length):
        raise BadRequest("malformed Content-Length")
    length = int(raw_length)
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


def forwarded_for(supplied: list[str], peer: str, own_address: str) -> str:
    """X-Forwarded-For as Google's external Application Load Balancer passes it on: whatever the client sent,
    then `<client-ip>,<load-balancer-ip>`. predict then finds the client where it does in the cloud
    (CLIENT_ADDRESS_HOPS=2), and a client that writes the header itself cannot choose which client it is."""
    return ",".join([*supplied, peer, own_address])


class JsonErrors(BaseHTTPRequestHandler):
    """The standard handler answers what it cannot parse (request line, headers, method) with an HTML page: here
    JSON of the functions' shape, as Cloud Run's front end would pass on the function's own answer."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code == 501:  # a method this server has no handler for: the client's mistake, as a function says it
            code, message = 405, f"{self.command} is not allowed"
        name = self.responses.get(code, ("error",))[0]
        self.close_connection = True
        # A request line it cannot parse leaves the default HTTP/0.9, whose answers have no status line at all.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        payload = {"error": {"code": re.sub(r"[^a-z]+", "_", name.lower()).strip("_"), "message": message or name}}
        _send_json(self, code, payload)


def proxy_handler(router: Router) -> type[BaseHTTPRequestHandler]:
    class Proxy(JsonErrors):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def __getattr__(self, name: str) -> Any:
            # Every method reaches the revision, which answers 405 itself where it serves none (Cloud Run forwards
            # any method to the container).
            if name.startswith("do_") and METHOD.fullmatch(name[3:]):
                return self._forward
            raise AttributeError(name)

        def _forward(self) -> None:
            try:
                body = _read_body(self)
            except BadRequest as exc:
                self.close_connection = True
                return _send_json(self, 400, {"error": {"code": "bad_request", "message": str(exc)}})
            if body is None:
                self.close_connection = True
                return _send_json(self, 413, {"error": {"code": "body_too_large", "message": "body too large"}})
            revision = router.acquire()
            if revision is None:
                unavailable = {"code": "no_revision", "message": "no model version is deployed yet"}
                return _send_json(self, 503, {"error": unavailable}, {"Retry-After": "5"})
            try:
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "x-forwarded-for"}
                }
                headers["Content-Length"] = str(len(body))
                headers["X-Forwarded-For"] = forwarded_for(
                    self.headers.get_all("X-Forwarded-For") or [], self.client_address[0], self.server.server_address[0]
                )
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
    class Admin(JsonErrors):
        def log_message(self, *args: object) -> None:
            pass

        def _describe(self) -> dict[str, Any]:
            traffic = router.traffic()
            if not traffic:
                return {"revision": None, "traffic": [], "split": None}
            stable = traffic[0][0]
            split = None
            if len(traffic) == 2:
                split = {"stable": stable.name, "candidate": traffic[1][0].name, "percent": traffic[1][1]}
            return {
                "revision": stable.name,
                "model_uri": stable.model_uri,
                "model_version": stable.model_version,
                "url": stable.service.url,
                "pid": stable.service.pid,
                "traffic": [
                    {
                        "revision": revision.name,
                        "model_version": revision.model_version,
                        "percent": percent,
                        "url": revision.service.url,
                        "pid": revision.service.pid,
                    }
                    for revision, percent in traffic
                ],
                "split": split,
            }

        def _error(self, status: int, code: str, message: str) -> None:
            _send_json(self, status, {"error": {"code": code, "message": message}})

        def _request(self) -> dict[str, Any] | None:
            try:
                request = json.loads(_read_body(self) or b"{}")
            except ValueError:  # BadRequest too
                request = None
            return request if isinstance(request, dict) else None

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/revisions"):
                return _send_json(self, 200, {"status": "ok", **self._describe()})
            return self._error(404, "not_found", self.path)

        def do_POST(self) -> None:
            if self.path != "/revisions":
                return self._error(404, "not_found", self.path)
            request = self._request() or {}
            model_uri, version = request.get("model_uri"), request.get("model_version")
            percent, sha256 = request.get("percent", 100), request.get("sha256")
            if (
                not isinstance(model_uri, str)
                or not isinstance(version, str)
                or not _is_percent(percent, 100)
                or not (sha256 is None or (isinstance(sha256, str) and SHA256.fullmatch(sha256)))
            ):
                give = (
                    "give model_uri, model_version and optionally percent (0 to 100, 100 takes all traffic) and "
                    "sha256 (64 lowercase hex digits)"
                )
                return self._error(400, "invalid_request", give)
            try:
                if percent == 100:
                    revision = router.deploy(model_uri, version, sha256)
                else:
                    revision = router.deploy_candidate(model_uri, version, percent, sha256)
            except Conflict as exc:
                return self._error(409, "conflict", str(exc))
            except Exception as exc:  # the old revision keeps serving; say why the new one did not start
                logger.error("revision on %s failed to start: %s", model_uri, exc)
                return self._error(500, "revision_failed", str(exc))
            answer = {"revision": revision.name, "url": revision.service.url, "split": self._describe()["split"]}
            return _send_json(self, 201, answer)

        def do_PUT(self) -> None:
            """{"stable", "candidate", "percent"} sets a split; {"revision"} gives one revision all traffic."""
            if self.path != "/traffic":
                return self._error(404, "not_found", self.path)
            request = self._request() or {}
            try:
                if isinstance(request.get("revision"), str):
                    router.take_all(request["revision"])
                elif (
                    isinstance(request.get("stable"), str)
                    and isinstance(request.get("candidate"), str)
                    and _is_percent(request.get("percent"), 99)
                ):
                    router.set_split(request["stable"], request["candidate"], request["percent"])
                else:
                    give = 'give {"revision"} or {"stable", "candidate", "percent" (0 to 99)}'
                    return self._error(400, "invalid_request", give)
            except Conflict as exc:
                return self._error(409, "conflict", str(exc))
            return _send_json(self, 200, self._describe())

    return Admin


def _is_percent(value: Any, highest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= highest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the stable public port of predict")
    parser.add_argument("--admin-port", type=int, required=True, help="the port of the revision API")
    parser.add_argument("--workdir", type=Path, required=True, help="where revisions write their logs")
    parser.add_argument("--model-uri", help="serve this staged folder at once")
    parser.add_argument("--model-version", help="the version --model-uri holds")
    parser.add_argument("--model-sha256", help="the sha256 the model file of --model-uri must have (MODEL_SHA256)")
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
        router.deploy(args.model_uri, args.model_version or "", args.model_sha256 or None)
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    try:
        public.serve_forever()
    finally:
        router.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
