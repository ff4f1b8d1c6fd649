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
OWN_POLICIES = {f"CKV2_SENTIMENT_{n}" for n in (1, 2, 3, 4, 5, 6, 9, 11, 17)}
OWN_POLICIES |= {f"CKV_SENTIMENT_{n}" for n in (7, 8, 10, 12, 18, 20, 21)}


def checkov_binary() -> Path:
    """checkov in its own virtualenv, made once per machine."""
    venv = Path.home() / ".cache" / "yelp-sentiment" / "checkov-3.3.30"
    binary = venv / "bin" / "checkov"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", CHECKOV], check=True, timeout=900)
    return binary


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    result = subprocess.run(
        [
            str(checkov_binary()),
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


# A module that opens functions to allUsers in each way the policies must see through; checkov runs on it with the
# two policies that keep the public functions behind the load balancer.
AROUND_THE_LOAD_BALANCER = """
locals {
  functions = {
    open     = { ingress = "ALLOW_ALL" }
    behind   = { ingress = "ALLOW_INTERNAL_AND_GCLB" }
    operator = { ingress = "ALLOW_ALL" }
  }
  public_functions = toset(["open", "behind"])
}

resource "google_cloudfunctions2_function" "main" {
  for_each = local.functions
  name     = each.key
  location = "europe-west1"
  service_config {
    ingress_settings = each.value.ingress
  }
}

resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = local.public_functions
  location = "europe-west1"
  name     = google_cloudfunctions2_function.main[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "operator" {
  location = "europe-west1"
  name     = google_cloudfunctions2_function.main["operator"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "user:ops@example.com"
}

resource "google_cloudfunctions2_function_iam_member" "signed_in" {
  location       = "europe-west1"
  cloud_function = google_cloudfunctions2_function.main["operator"].name
  role           = "roles/cloudfunctions.invoker"
  member         = "allAuthenticatedUsers"
}

resource "google_cloud_run_v2_service_iam_member" "derived" {
  for_each = { for name, f in local.functions : name => f if f.ingress == "ALLOW_ALL" }
  location = "europe-west1"
  name     = google_cloudfunctions2_function.main[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_cloud_run_v2_service_iam_member" "hidden" {
  for_each = merge({ for name in ["open"] : name => "allUsers" }, {})
  location = "europe-west1"
  name     = google_cloudfunctions2_function.main[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}
"""


@pytest.mark.system  # checkov runs from its own virtualenv
def test_public_behind_lb_policies_fail_each_function_reachable_around_the_load_balancer(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(AROUND_THE_LOAD_BALANCER)
    result = subprocess.run(
        [
            str(checkov_binary()),
            "-d",
            str(tmp_path),
            "--framework",
            "terraform",
            "--external-checks-dir",
            str(POLICIES),
            "--check",
            "CKV2_SENTIMENT_17,CKV_SENTIMENT_18",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(result.stdout)["results"]
    verdicts = {
        (c["check_id"], c["resource"].removeprefix("google_cloud_run_v2_service_iam_member.")): outcome
        for outcome in ("passed", "failed")
        for c in results[f"{outcome}_checks"]
    }
    failed = {key for key, outcome in verdicts.items() if outcome == "failed"}

    assert failed == {
        ("CKV2_SENTIMENT_17", 'public["open"]'),  # allUsers on a function with ingress all
        ("CKV2_SENTIMENT_17", "google_cloudfunctions2_function_iam_member.signed_in"),  # allAuthenticatedUsers too
        ("CKV_SENTIMENT_18", "derived"),  # allUsers under a for_each checkov cannot evaluate
        ("CKV_SENTIMENT_18", "hidden"),  # allUsers as an unresolved member
    }
    assert verdicts[("CKV2_SENTIMENT_17", 'public["behind"]')] == "passed"
    assert verdicts[("CKV2_SENTIMENT_17", "operator")] == "passed"  # ingress all, but IAM decides


# Cloud Run jobs: one as the configuration runs `train`, and the ways a job could drift from it.
JOBS = """
resource "google_service_account" "train" {
  account_id = "train"
}

resource "google_cloud_run_v2_job" "dedicated" {
  name     = "dedicated"
  location = "europe-west1"
  template {
    template {
      service_account = google_service_account.train.email
      max_retries     = 0
      containers {
        image = "europe-west1-docker.pkg.dev/p/r/training@sha256:0123"
      }
    }
  }
}

resource "google_cloud_run_v2_job" "default_account" {
  name     = "default-account"
  location = "europe-west1"
  template {
    template {
      max_retries = 0
      containers {
        image = "europe-west1-docker.pkg.dev/p/r/training:latest"
      }
    }
  }
}

resource "google_cloud_run_v2_job" "retrying" {
  name     = "retrying"
  location = "europe-west1"
  template {
    template {
      service_account = google_service_account.train.email
      containers {
        image = "europe-west1-docker.pkg.dev/p/r/training:latest"
      }
    }
  }
}
"""


@pytest.mark.system  # checkov runs from its own virtualenv
def test_job_policy_fails_a_job_on_the_default_account_or_with_retries_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(JOBS)
    result = subprocess.run(
        [
            str(checkov_binary()),
            "-d",
            str(tmp_path),
            "--framework",
            "terraform",
            "--external-checks-dir",
            str(POLICIES),
            "--check",
            "CKV_SENTIMENT_21",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    results = json.loads(result.stdout)["results"]
    verdicts = {
        c["resource"].removeprefix("google_cloud_run_v2_job."): outcome
        for outcome in ("passed", "failed")
        for c in results[f"{outcome}_checks"]
    }

    assert verdicts == {"dedicated": "passed", "default_account": "failed", "retrying": "failed"}
