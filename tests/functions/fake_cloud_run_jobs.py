"""A local stand-in of the Cloud Run Admin API v2 (REST) for jobs, enough for CloudRunJobRunner, that records its
requests.

It keeps one job. `POST /v2/{job}:run` creates an execution named `{job}/executions/<job id>-<n>` and answers the
long-running operation whose metadata is that execution, as the real API does (the operation is not polled by
the runner). The request's container overrides are kept per execution, so a test reads the variables the job
would have seen. `GET /v2/{execution}` answers the execution with the counts a test sets: running until
`finish(name, succeeded=...)` gives it a completion time and one succeeded or failed task. A job name it does not
keep is 404 NOT_FOUND; `refuse_next_run` answers the next run with 400 FAILED_PRECONDITION, as a job whose image
cannot be pulled does.
"""

from __future__ import annotations

import copy
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"


class FakeCloudRunJobs:
    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.requests: list[tuple[str, str, Any]] = []
        self.executions: dict[str, dict[str, Any]] = {}
        self.overrides: dict[str, dict[str, Any]] = {}
        self.refuse_next_run = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> FakeCloudRunJobs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def runs(self) -> list[Any]:
        posts = [(urllib.parse.urlsplit(path).path, body) for method, path, body in self.requests if method == "POST"]
        return [body for path, body in posts if path.endswith(":run")]

    def env(self, execution: str) -> dict[str, str]:
        """The variables the run's container override set on `execution`."""
        containers = self.overrides[execution].get("containerOverrides", [])
        return {v["name"]: v.get("value", "") for c in containers for v in c.get("env", [])}

    def finish(self, execution: str, *, succeeded: bool) -> None:
        with self._lock:
            record = self.executions[execution]
            record["runningCount"] = 0
            record["succeededCount" if succeeded else "failedCount"] = 1
            record["completionTime"] = "2026-12-02T10:30:00Z"

    def _run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self.refuse_next_run:
                self.refuse_next_run = False
                error = {"code": 400, "message": "the job's image cannot be pulled", "status": "FAILED_PRECONDITION"}
                return 400, {"error": error}
            job_id = self.job_name.rsplit("/", 1)[-1]
            name = f"{self.job_name}/executions/{job_id}-{len(self.executions) + 1:05d}"
            execution = {
                "name": name,
                "job": job_id,
                "taskCount": 1,
                "runningCount": 1,
                "createTime": "2026-12-02T10:00:00Z",
            }
            self.executions[name] = execution
            self.overrides[name] = copy.deepcopy((body or {}).get("overrides", {}))
            location = self.job_name.rsplit("/jobs/", 1)[0]
            operation = {
                "name": f"{location}/operations/run-{len(self.executions)}",
                "done": False,
                "metadata": {"@type": EXECUTION_TYPE, **execution},
            }
            return 200, operation

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
                if method == "POST" and path == f"/v2/{fake.job_name}:run":
                    return self._send(*fake._run(body))
                if method == "GET" and path.removeprefix("/v2/") in fake.executions:
                    with fake._lock:
                        return self._send(200, fake.executions[path.removeprefix("/v2/")])
                missing = {"code": 404, "message": f"no {method} {path}", "status": "NOT_FOUND"}
                return self._send(404, {"error": missing})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        return Handler
