"""checkov on infra/terraform, with the project's own policies (infra/checkov) for what checkov cannot see.

checkov runs from a virtualenv of its own: its `bc-python-hcl2` and the tests' `python-hcl2` both install a
module named `hcl2`, and one would shadow the other. The virtualenv is made once per machine and cached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = REPO_ROOT / "infra" / "terraform"
POLICIES = REPO_ROOT / "infra" / "checkov"
CHECKOV = "checkov==3.3.30"
# YAML graph policies, and Python ones where the graph drops what they check (references under for_each).
OWN_POLICIES = {f"CKV2_SENTIMENT_{n}" for n in (1, 2, 3, 4, 5, 6, 9, 11)}
OWN_POLICIES |= {f"CKV_SENTIMENT_{n}" for n in (7, 8, 10, 12, 20)}


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    venv = Path.home() / ".cache" / "yelp-sentiment" / "checkov-3.3.30"
    binary = venv / "bin" / "checkov"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", CHECKOV], check=True, timeout=900)
    result = subprocess.run(
        [
            str(binary),
            "-d",
            str(TERRAFORM),
            "--framework",
            "terraform",
            "secrets",
            "--external-checks-dir",
            str(POLICIES),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    reports = json.loads(result.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


@pytest.mark.system  # checkov runs from its own virtualenv
def test_checkov_finds_no_failed_check(checkov_report: dict) -> None:
    failed = [
        f"{c['check_id']} {c['resource']}"
        for report in checkov_report.values()
        for c in report.get("results", {}).get("failed_checks", [])
    ]

    assert failed == []
    assert checkov_report["terraform"]["summary"]["parsing_errors"] == 0


@pytest.mark.system
def test_checkov_ran_every_project_policy(checkov_report: dict) -> None:
    passed = {c["check_id"] for c in checkov_report["terraform"]["results"]["passed_checks"]}

    assert passed >= OWN_POLICIES


def test_every_checkov_skip_says_why() -> None:
    skips = re.findall(
        r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    )

    assert skips
    assert [check for check, why in skips if len((why or "").strip()) < 20] == []
