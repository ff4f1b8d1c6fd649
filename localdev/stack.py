"""`python -m localdev.stack up|down|status`: the local stack, with its URLs in .local/stack.json.

This issue's stack is the MLflow server with its UI; the later issues add the emulators and the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from localdev import services

REPO_ROOT = Path(__file__).resolve().parents[1]
# LOCAL_STACK_DIR moves the stack's state (tests use a temporary folder); .local/ by default.
LOCAL_DIR = Path(os.environ.get("LOCAL_STACK_DIR", REPO_ROOT / ".local"))
STACK_FILE = LOCAL_DIR / "stack.json"
PIDS_FILE = LOCAL_DIR / "pids.json"


def up() -> dict[str, str]:
    """Start what is not running yet; return the URLs."""
    urls, pids = _read(STACK_FILE), _read(PIDS_FILE)
    if "mlflow" in pids and services.alive(pids["mlflow"]):
        return urls
    mlflow = services.start_mlflow(LOCAL_DIR / "mlflow", port=5000 if _port_free(5000) else None)
    urls["mlflow"], pids["mlflow"] = mlflow.url, mlflow.pid
    _write(STACK_FILE, urls)
    _write(PIDS_FILE, pids)
    return urls


def down() -> None:
    """Stop every process group the stack started; keep the data under .local/ for the next `up`."""
    for pid in _read(PIDS_FILE).values():
        services.stop(int(pid))
    PIDS_FILE.unlink(missing_ok=True)
    STACK_FILE.unlink(missing_ok=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "url"], help="what to do")
    parser.add_argument("name", nargs="?", help="with url: which service (mlflow)")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            urls = up()
        except services.ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for name, url in sorted(urls.items()):
            print(f"{name:<10} {url}")
    elif args.command == "down":
        down()
        print("stack stopped")
    elif args.command == "status":
        pids = _read(PIDS_FILE)
        for name, url in sorted(_read(STACK_FILE).items()):
            state = "up" if services.alive(int(pids.get(name, 0) or 0)) else "down"
            print(f"{name:<10} {url} ({state})")
    else:
        url = _read(STACK_FILE).get(args.name or "")
        if not url:
            print(f"error: {args.name!r} is not running; run `make up`", file=sys.stderr)
            return 1
        print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
