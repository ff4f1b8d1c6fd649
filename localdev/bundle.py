"""`python -m localdev.bundle NAME OUT`: a function's self-contained deploy bundle.

The bundle is the function's folder plus a copy of the shared package, so Cloud Functions builds it with
nothing but its own requirements.txt; no sys.path tricks, nothing from training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PACKAGE = REPO_ROOT / "lib" / "sentiment_core" / "src" / "sentiment_core"
FUNCTIONS = ("predict", "feedback", "registry_watcher", "redeploy")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "README.md")


def build(name: str, out: Path) -> Path:
    """Write the bundle of function `name` into out (replaced if it exists)."""
    source = REPO_ROOT / "functions" / name
    if name not in FUNCTIONS or not (source / "main.py").is_file():
        raise ValueError(f"no function {name!r} (known: {', '.join(FUNCTIONS)})")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=_IGNORE)
    shutil.copytree(SHARED_PACKAGE, out / "sentiment_core", ignore=_IGNORE)
    return out


def requirements_of(name: str) -> list[str]:
    """The pinned requirement lines of a function's requirements.txt."""
    text = (REPO_ROOT / "functions" / name / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def resolve(requirements: list[str]) -> set[str]:
    """Every distribution pip would install for these requirements on a clean target (pip's --dry-run report)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                *requirements,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip cannot resolve {requirements}: {result.stderr[-2000:]}")
        return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.bundle", description=__doc__)
    parser.add_argument("name", choices=FUNCTIONS, help="which function")
    parser.add_argument("out", type=Path, help="output folder (replaced)")
    args = parser.parse_args(argv)
    print(build(args.name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
