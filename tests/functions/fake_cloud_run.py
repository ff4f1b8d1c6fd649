"""A local stand-in of the Cloud Run Admin API v2 (REST), enough for CloudRunDeployer, that records its requests.

It keeps one service, makes a revision per PATCH, answers the long-running operation on the first poll, and
serves the service's own /healthz by reading the manifest the current revision's MODEL_URI names (through the
GCS emulator), so a deploy only passes when the staged folder really holds the version announced.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
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
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.service: dict[str, Any] = {
            "name": service_name,
            "uri": self.url,
            "template": {
                "revision": first.rsplit("/", 1)[-1],
                "containers": [{"image": "gcr.io/p/predict", "env": [{"name": "MODEL_URI", "value": model_uri}]}],
            },
            # A manual rollback's fixed split: everything pinned to the first revision.
            "traffic": [{"type": REVISION, "revision": first.rsplit("/", 1)[-1], "percent": 100}],
            "latestCreatedRevision": first,
            "latestReadyRevision": first,
        }
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

    def model_uri(self) -> str:
        env = self.service["template"]["containers"][0]["env"]
        return next(v["value"] for v in env if v["name"] == "MODEL_URI")

    def _revision_name(self, number: int) -> str:
        return f"{self.service_name.rsplit('/services/', 1)[0]}/revisions/predict-{number:05d}-abc"

    def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._revision += 1
            created = self._revision_name(self._revision)
            self.service["template"] = copy.deepcopy(body["template"])
            self.service["traffic"] = copy.deepcopy(body.get("traffic", []))
            self.service["latestCreatedRevision"] = created
            if not self.never_ready:
                self.service["latestReadyRevision"] = created
            name = f"{self.service_name.rsplit('/services/', 1)[0]}/operations/op-{self._revision}"
            if self.fail_next_operation:
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

    def _healthz(self) -> dict[str, Any]:
        from google.cloud import storage

        bucket, _, prefix = self.model_uri().removeprefix("gs://").partition("/")
        manifest = json.loads(storage.Client().bucket(bucket).blob(f"{prefix}/manifest.json").download_as_bytes())
        return {"status": "ok", "model_version": manifest["model_version"]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((method, self.path, body))
                path = urllib.parse.unquote(parsed.path)
                if path == "/healthz" and method == "GET":
                    return self._send(200, fake._healthz())
                if path == f"/v2/{fake.service_name}":
                    if method == "GET":
                        return self._send(200, fake.service)
                    if method == "PATCH":
                        return self._send(200, fake._patch(body))
                if method == "GET" and path.removeprefix("/v2/") in fake._operations:
                    return self._send(200, fake._operations[path.removeprefix("/v2/")])
                missing = {"code": 404, "message": f"no {method} {path}", "status": "NOT_FOUND"}
                return self._send(404, {"error": missing})

            def do_GET(self) -> None:
                self._route("GET")

            def do_PATCH(self) -> None:
                self._route("PATCH")

        return Handler
