"""training/Dockerfile checked offline (no registry is reachable here): its instructions, the base pinned by
digest, the hashed lock it installs and its agreement with requirements/dev.txt, and a check that fails when the
training code imports a package the image does not install."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING = REPO_ROOT / "training"
DOCKERFILE = TRAINING / "Dockerfile"
LOCK = TRAINING / "requirements.txt"
DEV_LOCK = REPO_ROOT / "requirements" / "dev.txt"
SHARED = REPO_ROOT / "lib" / "sentiment_core" / "src" / "sentiment_core"
LOCAL_PACKAGES = {"training", "sentiment_core"}  # copied into the image, found through PYTHONPATH

pytestmark = pytest.mark.unit


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the last instruction ends with a continuation"
    return found


def named(parsed: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for kind, arguments in parsed if kind == keyword]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            found[canonical(match.group(1))] = match.group(2)
    return found


def locked_requirements(path: Path) -> dict[str, list[str]]:
    """name -> its --hash values, each requirement with its continuation lines."""
    found: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            current = canonical(re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0])
            found[current] = []
        if current is not None:
            found[current] += re.findall(r"--hash=sha256:([0-9a-f]+)", line)
        if not line.rstrip().endswith("\\"):
            current = None
    return found


def public(version: str) -> str:
    """PEP 440's public version: `2.13.0+cpu` -> `2.13.0` (requirements/dev.txt drops the local label)."""
    return version.split("+", 1)[0]


# --- what the training code imports ---------------------------------------------------------------------------


def imported_names(source: str) -> set[str]:
    """Every absolute module an `import` or `from ... import` names, at any depth (lazy imports in functions
    included); `from a.b import c` gives `a.b` and `a.b.c`, since c may be a module."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def training_sources(extra: Iterable[Path] = ()) -> list[Path]:
    """training/*.py and every sentiment_core module they import, transitively."""
    files = [*sorted(TRAINING.glob("*.py")), *extra]
    seen = set(files)
    todo = list(files)
    while todo:
        for name in imported_names(todo.pop().read_text()):
            parts = name.split(".")
            if parts[0] == "sentiment_core" and len(parts) > 1:
                module = SHARED / f"{parts[1]}.py"
                if module.exists() and module not in seen:
                    seen.add(module)
                    files.append(module)
                    todo.append(module)
    return files


def third_party(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] not in sys.stdlib_module_names | LOCAL_PACKAGES}


def distributions_of(name: str, by_top: dict[str, list[str]]) -> set[str]:
    """The installed distributions providing module `name`. A namespace package (google) is shared by many: the
    one whose files hold the longest prefix of the dotted name wins."""
    top = name.split(".")[0]
    candidates = by_top.get(top, [])
    if len(candidates) <= 1:
        return {canonical(d) for d in candidates}
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        path = "/".join(parts[:depth])
        owners = {
            canonical(d)
            for d in candidates
            if any(str(f).startswith(f"{path}/") or str(f) == f"{path}.py" for f in importlib.metadata.files(d) or [])
        }
        if owners:
            return owners
    return set()


def missing_distributions(files: Iterable[Path], installed: set[str]) -> dict[str, set[str]]:
    """module -> the distributions it needs that `installed` lacks (an empty set: no distribution provides it
    here at all, which is missing too)."""
    by_top = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for path in files:
        for name in third_party(imported_names(path.read_text())):
            needed.setdefault(name, distributions_of(name, by_top))
    missing = {}
    for name, owners in needed.items():
        if not owners:
            # `from a.b import c` where c is a name, not a module: covered when a.b is.
            parent = name.rsplit(".", 1)[0]
            if "." in name and parent in needed and needed[parent]:
                continue
            missing[name] = set()
        elif not owners & installed:
            missing[name] = owners
    return missing


def test_dockerfile_parses_into_the_expected_instructions() -> None:
    parsed = instructions(DOCKERFILE.read_text())

    assert parsed[0][0] == "FROM"
    assert {kind for kind, _ in parsed} <= {"FROM", "COPY", "RUN", "WORKDIR", "ARG", "ENV", "USER", "ENTRYPOINT"}
    assert len(named(parsed, "FROM")) == 1  # one stage: what is tested is what runs


def test_base_image_is_pinned_by_digest() -> None:
    (base,) = named(instructions(DOCKERFILE.read_text()), "FROM")

    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base


def test_dependencies_install_from_the_hashed_lock_only() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    (install,) = [r for r in named(parsed, "RUN") if "pip install" in r and "requirements" in r]

    assert "training/requirements.txt /opt/training/requirements.txt" in named(parsed, "COPY")
    assert "--require-hashes" in install.split()
    assert "--no-deps" in install.split()  # the lock is the whole tree: nothing resolved at build time
    assert "-r /opt/training/requirements.txt" in install
    # Only the lock's files: no package named on the command line, no upgrade of pip from an index.
    assert re.sub(r"--?[\w-]+(?:[= ](?!-)\S+)?", "", install.split("&&")[0]).split() == ["pip", "install"]


def test_image_runs_the_job_as_a_non_root_user_with_the_build_identity() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    env = " ".join(named(parsed, "ENV"))

    assert json.loads(named(parsed, "ENTRYPOINT")[-1]) == ["python", "-m", "training.job"]
    assert named(parsed, "USER")[-1] not in {"root", "0"}
    assert {a.split("=")[0] for a in named(parsed, "ARG")} >= {"GIT_COMMIT", "TRAINING_BUILD"}
    assert "GIT_COMMIT=${GIT_COMMIT}" in env
    assert "TRAINING_BUILD=${TRAINING_BUILD}" in env
    assert "PYTHONPATH=/app/lib/sentiment_core/src:/app" in env


def test_image_copies_the_training_code_and_the_shared_package() -> None:
    copies = [c.split() for c in named(instructions(DOCKERFILE.read_text()), "COPY")]
    sources = {source for *sources, _ in copies for source in sources}

    assert sources == {
        "training/requirements.txt",
        "lib/sentiment_core/src/sentiment_core/",
        "training/*.py",
        "pyproject.toml",  # the project's entry points: MLflow's identity-header plugin (training/mlflow_auth.py)
    }
    assert all(list(REPO_ROOT.glob(source)) for source in sources)
    ignored = (TRAINING / "Dockerfile.dockerignore").read_text()  # the context sends what is copied, no more
    assert {
        "!training/*.py",
        "!training/requirements.txt",
        "!lib/sentiment_core/src/sentiment_core/*.py",
        "!pyproject.toml",
    } <= set(ignored.split())


def test_the_project_itself_installs_offline_without_dependencies() -> None:
    """Only for its entry points: no index, no resolution, nothing that is not in the lock."""
    (project,) = [r for r in named(instructions(DOCKERFILE.read_text()), "RUN") if "pip install" in r and "/app" in r]

    assert {"--no-deps", "--no-index", "--no-build-isolation"} <= set(project.split())
    assert project.split()[-1] == "/app"


def test_every_requirement_of_the_lock_is_pinned_with_hashes() -> None:
    locked = locked_requirements(LOCK)

    assert len(locked) > 50
    assert [name for name, hashes in locked.items() if not hashes] == []
    assert [h for hashes in locked.values() for h in hashes if len(h) != 64] == []
    assert set(locked) == set(pins(LOCK))  # every requirement an exact pin


# `pip freeze`, which writes requirements/dev.txt, leaves out the installer's own packages.
NOT_FROZEN = {"pip", "setuptools", "wheel"}


def test_lock_versions_are_the_projects_tested_versions() -> None:
    locked, dev = pins(LOCK), pins(DEV_LOCK)
    differ = {name: public(v) for name, v in locked.items() if public(v) != dev.get(name)}

    assert {name: v for name, v in differ.items() if name not in NOT_FROZEN} == {}
    assert locked["torch"] == "2.13.0+cpu"  # the CPU wheel, by its own version and hash (training/Dockerfile)
    assert not [name for name in locked if name.startswith(("nvidia-", "triton"))]


def test_lock_covers_every_direct_requirement() -> None:
    direct = {
        canonical(re.split(r"[=<>!~\[ ;#]", line.strip(), maxsplit=1)[0])
        for line in (TRAINING / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert direct <= set(pins(LOCK))


def test_training_code_imports_only_what_the_image_installs() -> None:
    files = training_sources()

    assert TRAINING / "train.py" in files
    assert SHARED / "contract.py" in files  # the shared modules training imports are followed
    assert missing_distributions(files, set(pins(LOCK))) == {}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import hypothesis\n", {"hypothesis": {"hypothesis"}}),  # in the dev venv, not in the image
        ("def later():\n    import functions_framework\n", {"functions_framework": {"functions-framework"}}),
        ("from google.cloud import firestore\n", {"google.cloud.firestore": {"google-cloud-firestore"}}),
        ("import no_such_module_anywhere\n", {"no_such_module_anywhere": set()}),
        ("from google.cloud import storage\nimport numpy, json\nfrom training import data\n", {}),
    ],
)
def test_import_check_fails_on_a_package_the_image_lacks(tmp_path: Path, source: str, expected: dict) -> None:
    module = tmp_path / "job_extra.py"
    module.write_text(source)

    assert missing_distributions([module], set(pins(LOCK))) == expected


def test_cloud_build_builds_the_dockerfile_from_the_root_with_commit_and_build_id() -> None:
    config = yaml.safe_load((TRAINING / "cloudbuild.yaml").read_text())
    (step,) = config["steps"]

    assert step["args"][0] == "build"
    assert "--file=training/Dockerfile" in step["args"]
    assert step["args"][-1] == "."
    assert "--build-arg=GIT_COMMIT=${_GIT_COMMIT}" in step["args"]
    assert "--build-arg=TRAINING_BUILD=${BUILD_ID}" in step["args"]
    assert "--tag=${_IMAGE}" in step["args"]
    assert config["images"] == ["${_IMAGE}"]
    assert (REPO_ROOT / ".gcloudignore").read_text().count("!/training/") == 1


def test_make_lock_compiles_the_training_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    (loop,) = re.findall(r"for d in ([^;]+); do", makefile)

    assert "training" in loop.split()
