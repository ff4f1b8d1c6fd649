"""A local stand-in of the Cloud Run Admin API v2 (REST), enough for CloudRunDeployer, that records its requests.

It keeps one service and its revisions, answers the long-running operation on the first poll, and serves the
service's own /healthz by reading the manifest that the MODEL_URI of the revision with the largest share names
(through the GCS emulator), so a deploy only passes when the staged folder really holds the version announced.

A revision whose container has a startup probe on /healthz starts the way predict does: only when the staged
folder's manifest has the sha256 its MODEL_SHA256 names (predict refuses any other file, so its /healthz fails).
A revision that fails its probe never becomes ready: the operation ends in an error and traffic stays as it was.

Traffic behaves as the real API's does: a PATCH makes a new revision only when the template changes (a traffic
change alone does not), named by `template.revision` when it is set (prefixed by the service's name, never
reused for another template); the targets must add up to 100, name revisions that exist and use each tag once,
or the PATCH is refused with 400 INVALID_ARGUMENT and nothing changes. `trafficStatuses` reports each target with
its tag's URI. The real tag URI is a host name (`https://candidate---predict-abc.a.run.app`); here it is a path
of the fake's own URL, `/tags/<tag>`, whose /healthz reads that revision's model, so one port serves both.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LATEST = 1  # TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = 2  # ..._REVISION


class FakeCloudRun:
    def __init__(self, service_name: str, model_uri: str) -> None:
        self.service_name = service_name
        self.requests: list[tuple[str, str, Any]] = []
        self.fail_next_operation = False
        self.never_ready = False
        self._lock = threading.Lock()
        self._operations: dict[str, dict[str, Any]] = {}
        self._revision = 1
        first = self._revision_name(1)
        template = {
            "revision": first.rsplit("/", 1)[-1],
            "containers": [{"image": "gcr.io/p/predict", "env": [{"name": "MODEL_URI", "value": model_uri}]}],
        }
        self.revisions: dict[str, dict[str, Any]] = {first.rsplit("/", 1)[-1]: template}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), json_api_handler(self._route, self.requests))
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.service: dict[str, Any] = {
            "name": service_name,
            "uri": self.url,
            "template": copy.deepcopy(template),
            # A manual rollback's fixed split: everything pinned to the first revision.
            "traffic": [{"type": REVISION, "revision": first.rsplit("/", 1)[-1], "percent": 100}],
            "latestCreatedRevision": first,
            "latestReadyRevision": first,
        }
        self.service["trafficStatuses"] = self._statuses()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> FakeCloudRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def patches(self) -> list[Any]:
        return [body for method, _, body in self.requests if method == "PATCH"]

    def model_uri(self, revision: str | None = None) -> str:
        """The MODEL_URI of `revision`, by default of the service's template (its latest revision)."""
        template = self.revisions[revision] if revision else self.service["template"]
        env = template["containers"][0]["env"]
        return next(v["value"] for v in env if v["name"] == "MODEL_URI")

    def shares(self) -> dict[str, int]:
        """Percent of traffic per revision (short name), as the service reports it routes."""
        return {s["revision"]: s["percent"] for s in self.service["trafficStatuses"] if s["percent"]}

    def tags(self) -> dict[str, str]:
        return {s["tag"]: s["revision"] for s in self.service["trafficStatuses"] if s.get("tag")}

    def _revision_name(self, number: int) -> str:
        return f"{self.service_name.rsplit('/services/', 1)[0]}/revisions/predict-{number:05d}-abc"

    def _latest_ready(self) -> str:
        return self.service["latestReadyRevision"].rsplit("/", 1)[-1]

    def _statuses(self) -> list[dict[str, Any]]:
        statuses = []
        for target in self.service["traffic"]:
            # A LATEST target is reported with the revision it resolves to, as the real service does.
            status = {**target, "revision": target.get("revision") or self._latest_ready()}
            if target.get("tag"):
                status["uri"] = f"{self.url}/tags/{target['tag']}"
            statuses.append(status)
        return statuses

    def _invalid(self, body: dict[str, Any]) -> str | None:
        """Why the real API would refuse this PATCH, or None."""
        service_id = self.service_name.rsplit("/", 1)[-1]
        named = body["template"].get("revision", "")
        if named and not re.fullmatch(rf"{service_id}-[a-z0-9-]+", named):
            return f"revision name {named!r} must start with {service_id}-"
        if named in self.revisions and self.revisions[named] != body["template"]:
            return f"revision {named} already exists with another template"
        traffic = body.get("traffic", [])
        if sum(t.get("percent", 0) for t in traffic) != 100:
            return "traffic percents must add up to 100"
        for target in traffic:
            if target.get("type") == REVISION and target.get("revision") not in {*self.revisions, named}:
                return f"revision {target.get('revision')} does not exist"
        tags = [t["tag"] for t in traffic if t.get("tag")]
        if len(tags) != len(set(tags)):
            return f"tags must be unique, got {tags}"
        return None

    def _probe_fails(self, template: dict[str, Any]) -> bool:
        """Whether the template's startup probe on /healthz fails: predict's model check, read from the manifest."""
        from google.cloud import storage

        container = template["containers"][0]
        if container.get("startupProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            return False
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        if not env.get("MODEL_SHA256"):
            return False
        bucket, _, prefix = env["MODEL_URI"].removeprefix("gs://").partition("/")
        try:
            blob = storage.Client().bucket(bucket).blob(f"{prefix.strip('/')}/manifest.json")
            manifest = json.loads(blob.download_as_bytes())
        except Exception:  # no such folder: predict cannot load a model either
            return True
        return manifest.get("sha256") != env["MODEL_SHA256"]

    def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._revision += 1
            probe_failed = False
            if body["template"] != self.service["template"]:
                created = body["template"].get("revision") or self._revision_name(self._revision).rsplit("/", 1)[-1]
                self.revisions[created] = copy.deepcopy(body["template"])
                created = f"{self.service_name.rsplit('/services/', 1)[0]}/revisions/{created}"
                self.service["latestCreatedRevision"] = created
                probe_failed = self._probe_fails(body["template"])
                if not self.never_ready and not probe_failed:
                    self.service["latestReadyRevision"] = created
            self.service["template"] = copy.deepcopy(body["template"])
            if not probe_failed:  # Cloud Run routes nothing to a revision that never became ready
                self.service["traffic"] = copy.deepcopy(body.get("traffic", []))
            self.service["trafficStatuses"] = self._statuses()
            name = f"{self.service_name.rsplit('/services/', 1)[0]}/operations/op-{self._revision}"
            if probe_failed:
                message = "the revision's startup probe on /healthz failed: it is not ready and serves no traffic"
                done = {"name": name, "done": True, "error": {"code": 9, "message": message}}
            elif self.fail_next_operation:
                self.fail_next_operation = False
                done = {"name": name, "done": True, "error": {"code": 9, "message": "revision failed to start"}}
            else:
                done = {
                    "name": name,
                    "done": True,
                    "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **self.service},
                }
            self._operations[name] = done
            return {"name": name, "done": False}

    def _healthz(self, tag: str | None = None) -> dict[str, Any]:
        from google.cloud import storage

        if tag is None:
            shares = self.shares()
            revision = max(shares, key=shares.__getitem__)
        else:
            revision = self.tags()[tag]
        bucket, _, prefix = self.model_uri(revision).removeprefix("gs://").partition("/")
        manifest = json.loads(storage.Client().bucket(bucket).blob(f"{prefix}/manifest.json").download_as_bytes())
        return {"status": "ok", "model_version": manifest["model_version"]}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/healthz" and method == "GET":
            return 200, self._healthz()
        tagged = re.fullmatch(r"/tags/([a-z0-9-]+)/healthz", path)
        if tagged and method == "GET" and tagged.group(1) in self.tags():
            return 200, self._healthz(tagged.group(1))
        if path == f"/v2/{self.service_name}":
            if method == "GET":
                return 200, self.service
            if method == "PATCH":
                invalid = self._invalid(body)
                if invalid:
                    return 400, {"error": {"code": 400, "message": invalid, "status": "INVALID_ARGUMENT"}}
                return 200, self._patch(body)
        if method == "GET" and path.removeprefix("/v2/") in self._operations:
            return 200, self._operations[path.removeprefix("/v2/")]
        return not_found(method, path)


def not_found(method: str, path: str) -> tuple[int, Any]:
    return 404, {"error": {"code": 404, "message": f"no {method} {path}", "status": "NOT_FOUND"}}


def json_api_handler(
    route: Callable[[str, str, Any], tuple[int, Any]], requests: list[tuple[str, str, Any]]
) -> type[BaseHTTPRequestHandler]:
    """A handler that records each request (method, raw path, JSON body) and answers route(method, unquoted path,
    body) as JSON: the REST shape of Google's APIs that the client libraries' REST transport speaks."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            requests.append((method, self.path, body))
            status, payload = route(method, urllib.parse.unquote(urllib.parse.urlsplit(self.path).path), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def do_PATCH(self) -> None:
            self._answer("PATCH")

    return Handler
