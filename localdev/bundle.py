"""`python -m localdev.bundle NAME OUT`: a function's self-contained deploy bundle.

The bundle is the function's folder plus a copy of the shared package, so Cloud Functions builds it with
nothing but its own requirements.txt; no sys.path tricks, nothing from training.

Each function's requirements.txt is its lock: every package it installs, pinned with hashes, compiled by
`make lock` from the top-level requirements in requirements.in (with the versions of requirements/dev.txt,
so the tests run what is deployed). pip then installs in --require-hashes mode: nothing floats at build time.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PACKAGE = REPO_ROOT / "lib" / "sentiment_core" / "src" / "sentiment_core"
FUNCTIONS = ("predict", "feedback", "registry_watcher", "redeploy", "retrain")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "README.md", "requirements.in")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def build(name: str, out: Path) -> Path:
    """Write the bundle of function `name` into out (replaced if it exists): its folder and the modules of the
    shared package it reaches, so its lock covers every import of the bundle (predict's model loader, say,
    stays out of feedback)."""
    source = REPO_ROOT / "functions" / name
    if name not in FUNCTIONS or not (source / "main.py").is_file():
        raise ValueError(f"no function {name!r} (known: {', '.join(FUNCTIONS)})")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=_IGNORE)
    (out / "sentiment_core").mkdir()
    for module in ["__init__", *sorted(shared_modules(source))]:
        shutil.copy2(SHARED_PACKAGE / f"{module}.py", out / "sentiment_core" / f"{module}.py")
    return out


def shared_modules(source: Path) -> set[str]:
    """The shared package's modules that a function's code reaches through imports, lazy ones too."""
    reached: set[str] = set()
    pending = [path for path in source.glob("*.py")]
    while pending:
        for module in _shared_imports(pending.pop()) - reached:
            reached.add(module)
            pending.append(SHARED_PACKAGE / f"{module}.py")
    return reached


def _shared_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith(f"{SHARED_PACKAGE.name}."))
        elif isinstance(node, ast.ImportFrom) and node.module == SHARED_PACKAGE.name:
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{SHARED_PACKAGE.name}."):
            names.add(node.module.split(".")[1])
    return {name for name in names if (SHARED_PACKAGE / f"{name}.py").is_file()}


def requirements_of(name: str) -> list[str]:
    """The top-level requirement lines of a function (its requirements.in), each pinned with ==."""
    text = (REPO_ROOT / "functions" / name / "requirements.in").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def lock_path(name: str) -> Path:
    return REPO_ROOT / "functions" / name / "requirements.txt"


def locked(name: str) -> dict[str, str]:
    """Every package of a function's lock: canonical name -> pinned version."""
    pins = (_PIN.match(line) for line in lock_path(name).read_text().splitlines())
    return {canonical(m.group(1)): m.group(2) for m in pins if m}


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirements: list[str]) -> set[str]:
    """Every distribution pip would install for these requirements on a clean target (pip's --dry-run report).

    `requirements` are requirement specifiers or pip options (e.g. `--require-hashes -r lock.txt`).
    """
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
        return {canonical(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def imports_of(bundle: Path) -> set[str]:
    """What a built bundle imports from outside itself and the standard library, lazy imports too.

    `from a.b import c` gives `a.b` and `a.b.c`: c may be a module (a namespace package's, e.g. google.cloud's
    firestore) or a name in a.b; the caller keeps the ones that are modules.
    """
    local = {path.stem for path in bundle.glob("*.py")} | {path.name for path in bundle.iterdir() if path.is_dir()}
    found: set[str] = set()
    for source in bundle.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] not in local and m.split(".")[0] not in sys.stdlib_module_names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.bundle", description=__doc__)
    parser.add_argument("name", choices=FUNCTIONS, help="which function")
    parser.add_argument("out", type=Path, help="output folder (replaced)")
    args = parser.parse_args(argv)
    print(build(args.name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
