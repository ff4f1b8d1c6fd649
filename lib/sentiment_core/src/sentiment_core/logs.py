"""One JSON line per log record, in the shape Cloud Logging reads (severity, message, trace)."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

# The `event` field of the log lines that log-based metrics and alerts count (infra/terraform/monitoring.tf
# filters on these values; tests/infra checks each filter matches a line the code writes).
EVENT_FIELD = "event"
DEPLOY_REFUSED = "deploy_refused"  # the deploy gate refused a version (field `reason`)
ROLLOUT_ROLLED_BACK = "rollout_rolled_back"  # a rollout ended with the stable version back (field `reason`)
DEPLOY_FAILED = "deploy_failed"  # a redeploy failed; Pub/Sub delivers again, then dead-letters the event
EVENT_UNPROCESSABLE = "event_unprocessable"  # a message that can never be processed: it will be dead-lettered
DRIFT_DETECTED = "drift_detected"  # monitoring: a version's traffic drifted from its reference (WARNING)
DRIFT_RESOLVED = "drift_resolved"  # ... and came back (INFO)
# Each scheduled evaluation of a version (INFO): its estimated and feedback accuracy, for the dashboard.
MONITORING_EVALUATED = "monitoring_evaluated"
MONITORING_FAILED = "monitoring_failed"  # the scheduled evaluation could not read or write Firestore (ERROR)

_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        trace = _trace.get()
        if trace:
            entry["logging.googleapis.com/trace"] = trace
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON; idempotent."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)


def bind_trace(headers: Any, project: str | None = None) -> None:
    """Take the trace id from X-Cloud-Trace-Context or traceparent, for every record of this request."""
    trace_id = None
    cloud = headers.get("X-Cloud-Trace-Context") or ""
    if cloud:
        trace_id = cloud.split("/", 1)[0]
    else:
        parent = (headers.get("traceparent") or "").split("-")
        if len(parent) == 4 and len(parent[1]) == 32:
            trace_id = parent[1]
    if trace_id and all(c in "0123456789abcdefABCDEF" for c in trace_id):
        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT", "local")
        _trace.set(f"projects/{project}/traces/{trace_id}")
    else:
        _trace.set(None)
