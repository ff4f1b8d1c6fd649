"""docs/permissions.md against the Terraform and the code: every role its table lists is granted to that account
(and nothing more), and every Google client the code an account runs constructs has a row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra.terraform_config import REPO_ROOT, functions, granted_roles

TABLE = REPO_ROOT / "docs" / "permissions.md"
SHARED = REPO_ROOT / "lib" / "sentiment_core" / "src" / "sentiment_core"

# How the code reaches a Google API, and the API's name in the table's API column.
CLIENTS = {
    r"\bfirestore\.Client\(": "Firestore",
    r"https://firestore\.googleapis\.com": "Firestore",
    r"\bstorage\.Client\(": "Cloud Storage",
    r"\bPublisherClient\(": "Pub/Sub",
    r"\brun_v2\.ServicesClient\(": "Cloud Run Admin",
    r"\brun_v2\.(?:Jobs|Executions)Client\(": "Cloud Run Admin",  # the retrain check runs the job train
    r"service-accounts/default/identity": "Cloud Run invoke",
}
KNOWN_MODULES = {"firestore", "storage", "pubsub_v1", "run_v2"}  # google.cloud modules CLIENTS covers
KNOWN_HOSTS = {"firestore.googleapis.com"}
# Shared modules a function imports without calling the part that builds their client: (source, module) -> what
# its own files would have to call for it, checked absent.
NOT_CALLED = {
    ("feedback", "sentiment_core/firestore_rest.py"): "web.rest_writer",  # predict's writer
    ("registry_watcher", "sentiment_core/firestore_rest.py"): "web.rest_writer",
    ("registry_watcher", "sentiment_core/web.py"): "web.firestore_",  # the watcher imports web for serve() only
    ("retrain", "sentiment_core/firestore_rest.py"): "web.rest_writer",
    ("retrain", "sentiment_core/web.py"): "web.firestore_",  # the retrain check imports web for serve() only
}


def rows() -> list[dict[str, str]]:
    """The table's rows: account, code, API, methods, role, on (backticks removed)."""
    columns = ["account", "code", "api", "methods", "role", "on"]
    found = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(columns) and cells[0].startswith("`"):
            found.append(dict(zip(columns, [c.strip("`") for c in cells], strict=True)))
    return found


def label(path: Path) -> str:
    return str(path.relative_to(SHARED.parent)) if SHARED in path.parents else str(path.relative_to(REPO_ROOT))


def code_of(source: str) -> set[Path]:
    """A function's own files and every shared module they import, transitively."""
    files = set((REPO_ROOT / "functions" / source).glob("*.py"))
    todo = list(files)
    while todo:
        text = todo.pop().read_text()
        names = re.findall(r"from sentiment_core\.(\w+) import", text) + re.findall(r"from \.(\w+) import", text)
        for group in re.findall(r"from (?:sentiment_core|\.) import \(?([\w, \n]+)\)?", text):
            names += re.findall(r"\w+", group)
        for name in names:
            module = SHARED / f"{name}.py"
            if module.exists() and module not in files:
                files.add(module)
                todo.append(module)
    return files


def clients(path: Path) -> set[str]:
    text = path.read_text()
    return {api for pattern, api in CLIENTS.items() if re.search(pattern, text)}


def test_the_table_has_a_row_per_account_and_api() -> None:
    found = rows()

    assert len(found) > 30
    assert {r["account"] for r in found} >= {s["service_account"] for s in functions().values()}


def test_terraform_grants_each_account_exactly_the_roles_of_the_table() -> None:
    listed: dict[str, set[str]] = {}
    for row in rows():
        listed.setdefault(row["account"], set()).add(row["role"])

    assert granted_roles() == listed


@pytest.mark.parametrize("name", sorted(functions()))
def test_every_google_client_an_account_runs_has_a_row(name: str) -> None:
    spec = functions()[name]
    if not (REPO_ROOT / "functions" / spec["source"]).is_dir():
        pytest.skip(f"functions/{spec['source']} not in the tree yet (issue #16's retrain check)")
    covered = {(r["code"], r["api"]) for r in rows() if r["account"] == spec["service_account"]}
    used = {(label(path), api) for path in code_of(spec["source"]) for api in clients(path)}
    own = "\n".join(p.read_text() for p in (REPO_ROOT / "functions" / spec["source"]).glob("*.py"))
    skipped = {(module, api) for module, api in used if (spec["source"], module) in NOT_CALLED}

    assert used
    assert [
        NOT_CALLED[spec["source"], module] for module, _ in skipped if NOT_CALLED[spec["source"], module] in own
    ] == []
    assert used - skipped - covered == set()


def test_every_google_client_in_the_code_is_one_the_check_knows() -> None:
    files = [*REPO_ROOT.glob("functions/*/*.py"), *SHARED.glob("*.py")]
    text = "\n".join(p.read_text() for p in files)
    modules = set(re.findall(r"from google\.cloud import (\w+)", text))
    modules |= set(re.findall(r"google\.cloud\.(\w+)", text))
    hosts = set(re.findall(r"https://([\w.-]+\.googleapis\.com)", text))

    assert modules - KNOWN_MODULES == set()  # a new client: add its pattern to CLIENTS and its rows to the table
    assert hosts - KNOWN_HOSTS == set()


def test_the_code_column_names_files_that_exist() -> None:
    named = {r["code"] for r in rows()} - {"platform"}
    named -= {"functions/retrain"} - {n for n in named if (REPO_ROOT / n).exists()}  # issue #16's, until in the tree

    assert [n for n in named if not (REPO_ROOT / n).exists() and not (SHARED.parent / n).exists()] == []
