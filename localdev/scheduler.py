"""`python -m localdev.scheduler --url URL [--interval 60]`: Cloud Scheduler's job, locally.

POSTs `{}` to the registry watcher at once and then every interval, and logs each answer on one line. A failed
tick is logged and the next one comes on time, as with Cloud Scheduler. With --export-to, it also exports the
Firestore emulator's data there after every tick, so a crash of the emulator loses at most one interval.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from localdev import services


def tick(url: str, timeout_s: float) -> str:
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return f"{response.status} {response.read().decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return f"error {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the registry watcher's tick URL")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks")
    parser.add_argument("--firestore", help="the Firestore emulator's host:port, to export after each tick")
    parser.add_argument("--project", default="demo-local", help="the emulator's project")
    parser.add_argument("--export-to", type=Path, help="folder of the Firestore export (replaced on success)")
    args = parser.parse_args(argv)
    if (args.firestore is None) != (args.export_to is None):
        parser.error("--firestore and --export-to go together")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.is_set():
        started = time.monotonic()
        print(time.strftime("%H:%M:%S"), "tick:", tick(args.url, timeout_s=max(5.0, args.interval)), flush=True)
        if args.export_to is not None:
            try:
                services.export_firestore(args.firestore, args.project, args.export_to)
            except services.ServiceError as exc:  # the last good export stays; the next tick tries again
                print(time.strftime("%H:%M:%S"), "export:", exc, flush=True)
        stopped.wait(max(0.0, args.interval - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
