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
import threading
import urllib.parse
from http.server import ThreadingHTTPServer
from typing import Any

from tests.functions.fake_cloud_run import json_api_handler, not_found

EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"


class FakeCloudRunJobs:
    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.requests: list[tuple[str, str, Any]] = []
        self.executions: dict[str, dict[str, Any]] = {}
        self.overrides: dict[str, dict[str, Any]] = {}
        self.refuse_next_run = False
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), json_api_handler(self._route, self.requests))
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

    def _cancel(self, name: str) -> tuple[int, Any]:
        """As the real API: a running execution's tasks are cancelled; one that completed cannot be."""
        with self._lock:
            record = self.executions[name]
            if record.get("completionTime"):
                error = {"code": 400, "message": "the execution has completed", "status": "FAILED_PRECONDITION"}
                return 400, {"error": error}
            record.update(runningCount=0, cancelledCount=1, completionTime="2026-12-02T10:30:00Z")
            location = self.job_name.rsplit("/jobs/", 1)[0]
            metadata = {"@type": EXECUTION_TYPE, **record}
            return 200, {"name": f"{location}/operations/cancel-{name.rsplit('-', 1)[-1]}", "metadata": metadata}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path == f"/v2/{self.job_name}:run":
            return self._run(body)
        if method == "POST" and path.endswith(":cancel") and path[4:].removesuffix(":cancel") in self.executions:
            return self._cancel(path[4:].removesuffix(":cancel"))
        if method == "GET" and path.removeprefix("/v2/") in self.executions:
            with self._lock:
                return 200, copy.deepcopy(self.executions[path.removeprefix("/v2/")])
        return not_found(method, path)
