"""`python -m localdev.scheduler --url URL [--interval 60] [--retrain-url URL]`: Cloud Scheduler's jobs, locally.

POSTs `{}` to the registry watcher at once and then every interval, and logs each answer on one line in words
(what it did, the production and serving versions). A failed tick is logged and the next one comes on time, as
with Cloud Scheduler. With --export-to, it also exports the Firestore emulator's data there after every tick, so
a crash of the emulator loses at most one interval. With --retrain-url, it ticks the retrain check as well, every
--retrain-interval (the cloud's second scheduler job).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localdev import services


def tick(url: str, timeout_s: float, describe_answer: Callable[[int, str], str] | None = None) -> str:
    """One tick; its answer as a log line (by default in the registry watcher's words)."""
    describe_answer = describe_answer or describe
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return describe_answer(response.status, response.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return describe_answer(exc.code, exc.read().decode(errors="replace"))
    except (urllib.error.URLError, OSError) as exc:
        return f"error {exc}"


def describe(status: int, body: str) -> str:
    """The watcher's answer in words: "200 up_to_date: production version 3, serving version 3"; an absent
    version reads "no production version" or "nothing serving", never "None"."""
    answer = _answer(status, body)
    if isinstance(answer, str):
        return answer
    desired, serving = answer.get("desired_version"), answer.get("serving_version")
    line = f"{status} {answer.get('action')}: " + ", ".join(
        [
            f"production version {desired}" if desired else "no production version",
            f"serving version {serving}" if serving else "nothing serving",
        ]
    )
    return line + (f" ({answer['detail']})" if answer.get("detail") else "")


def describe_retrain(status: int, body: str) -> str:
    """The retrain check's answer in words: "200 started: execution ... started: <why>"."""
    answer = _answer(status, body)
    if isinstance(answer, str):
        return answer
    line = f"{status} {answer.get('action')}"
    return line + (f": {answer['detail']}" if answer.get("detail") else "")


def _answer(status: int, body: str) -> dict | str:
    """The answer as a JSON object, or already in words: an error's code and message, or a body that is no JSON
    object as it came."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return f"{status} {body.strip()}"
    if isinstance(answer.get("error"), dict):
        return f"{status} {answer['error'].get('code')}: {answer['error'].get('message')}"
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the registry watcher's tick URL")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks (default: 60)")
    parser.add_argument("--firestore", help="the Firestore emulator's host:port, to export after each tick")
    parser.add_argument("--project", default="demo-local", help="the emulator's project")
    parser.add_argument("--export-to", type=Path, help="folder of the Firestore export (replaced on success)")
    parser.add_argument("--retrain-url", help="the retrain check's tick URL, ticked on its own interval")
    parser.add_argument(
        "--retrain-interval",
        type=float,
        default=60.0,
        help="seconds between retrain ticks, the first one interval after start; 0: never (default: 60)",
    )
    args = parser.parse_args(argv)
    if (args.firestore is None) != (args.export_to is None):
        parser.error("--firestore and --export-to go together")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    now = time.monotonic()
    due = {"watcher": now}
    if args.retrain_url and args.retrain_interval > 0:
        # Not at once: Cloud Scheduler's first run comes a period after the job exists too, and a fresh stack's
        # first model is the demo's (or a person's) to train.
        due["retrain"] = now + args.retrain_interval
    while not stopped.is_set():
        started = time.monotonic()
        if started >= due["watcher"]:
            due["watcher"] = started + args.interval
            print(time.strftime("%H:%M:%S"), "tick:", tick(args.url, timeout_s=max(5.0, args.interval)), flush=True)
            if args.export_to is not None:
                try:
                    services.export_firestore(args.firestore, args.project, args.export_to)
                except services.ServiceError as exc:  # the last good export stays; the next tick tries again
                    print(time.strftime("%H:%M:%S"), "export:", exc, flush=True)
        if "retrain" in due and time.monotonic() >= due["retrain"]:
            due["retrain"] = time.monotonic() + args.retrain_interval
            line = tick(args.retrain_url, timeout_s=60.0, describe_answer=describe_retrain)
            print(time.strftime("%H:%M:%S"), "retrain:", line, flush=True)
        stopped.wait(max(0.0, min(due.values()) - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
