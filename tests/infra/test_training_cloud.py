"""Continuous training's Terraform read offline (training.tf and its grants): the job `train`, the retrain check's
environment against the names the contract fixes, the data bucket, the scheduler entry, the export's index, and
the variables' checks evaluated by terraform itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.infra.terraform_config import REPO_ROOT, TERRAFORM, functions, locals_, parsed, resources, unquote

DIGEST = "europe-west1-docker.pkg.dev/p/sentiment/training@sha256:" + "a" * 64

# The retrain check's variables as the contract names them (functions/retrain reads them; the job gets its own).
RETRAIN_ENV = {
    "GOOGLE_CLOUD_PROJECT",
    "FIRESTORE_DATABASE",
    "DEPLOYMENTS_DATABASE",
    "MODEL_NAME",
    "DATA_URI",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_IAM_AUDIENCE",
    "MLFLOW_TIMEOUT_S",
    "MLFLOW_EXPERIMENT",
    "RETRAIN_ARGS",
    "TRAINING_IMAGE",
    "RETRAIN_MIN_INTERVAL_S",
    "RETRAIN_MIN_FEEDBACK",
    "FEEDBACK_EXPORT_INTERVAL_S",
    "RETRAIN_BACKOFF_S",
    "RETRAIN_TIMEOUT_S",
    "RETRAIN_RUNNER",
    "TRAINING_JOB",
    "AUTO_PROMOTE",
}
JOB_ENV = {
    "DATA_URI",
    "RETRAIN_ARGS",
    "TRAINING_IMAGE",
    "AUTO_PROMOTE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_IAM_AUDIENCE",
    "GOOGLE_CLOUD_PROJECT",
}

pytestmark = pytest.mark.unit


def merged_env(expression: object) -> dict[str, str]:
    """An env local as HCL text: its inline KEY = value pairs and those of the locals it merges."""
    if isinstance(expression, dict):
        return {unquote(k): str(v) for k, v in expression.items()}
    text = str(expression)
    found = {}
    for local in re.findall(r"local\.(\w+)", text):
        if local in locals_() and ("_env" in local):
            found.update(merged_env(locals_()[local]))
    found.update(dict(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=\s*([^,}\n]+)", text)))
    return found


def test_retrain_check_gets_the_contracts_variables_and_the_mlflow_password_as_a_secret() -> None:
    env = merged_env(locals_()["function_env"]["retrain"])
    secrets = locals_()["function_secrets"]["retrain"]

    assert set(env) == RETRAIN_ENV
    assert set(secrets) == {"MLFLOW_TRACKING_PASSWORD"}
    assert env["RETRAIN_RUNNER"].strip('"') == "cloud_run"
    assert "local.training_job" in env["TRAINING_JOB"]
    assert re.search(r'jobs/train"$', locals_()["training_job"])


def test_job_and_check_take_retrain_args_and_the_image_from_one_variable_each() -> None:
    job = locals_()["training_env"]
    check = merged_env(locals_()["function_env"]["retrain"])

    assert set(job) == JOB_ENV
    for name, variable in (
        ("RETRAIN_ARGS", "var.retrain_args"),
        ("TRAINING_IMAGE", "var.training_image"),
        ("AUTO_PROMOTE", "var.auto_promote"),
        ("DATA_URI", "local.data_uri"),
    ):
        assert job[name] == "${" + variable + "}", name
        assert check[name].strip() == variable, name  # the check's map is an HCL merge(): the bare reference


def test_training_job_runs_the_image_by_digest_as_its_own_account_without_retries() -> None:
    job = resources("google_cloud_run_v2_job")["train"]
    task = job["template"][0]["template"][0]
    (container,) = task["containers"]

    assert unquote(job["name"]) == "train"
    assert task["service_account"] == '${google_service_account.main["train"].email}'
    assert task["max_retries"] == 0
    assert unquote(task["timeout"]) == "${var.training_timeout_s}s"
    assert container["image"] == "${var.training_image}"
    assert container["resources"][0]["limits"] == {"cpu": "${var.training_cpu}", "memory": "${var.training_memory}"}
    assert "train" in locals_()["service_accounts"]


def test_retrain_function_is_internal_and_ticked_by_the_scheduler_only() -> None:
    spec = functions()["retrain"]
    tick = resources("google_cloud_scheduler_job")["retrain"]
    invokers = str(locals_()["invokers"])

    assert (spec["entry_point"], spec["ingress"], spec["service_account"]) == (
        "retrain_check",
        "ALLOW_INTERNAL_ONLY",
        "retrain",
    )
    assert "oidc_token" in tick["http_target"][0]
    assert tick["retry_config"][0]["retry_count"] == 0
    assert re.findall(r'"(retrain/[\w-]+)"', invokers) == ["retrain/scheduler"]
    assert "retrain" not in str(locals_()["public_functions"])


def test_data_bucket_is_versioned_private_and_uniform() -> None:
    bucket = resources("google_storage_bucket")["training_data"]

    assert bucket["uniform_bucket_level_access"] is True
    assert unquote(bucket["public_access_prevention"]) == "enforced"
    assert bucket["versioning"][0]["enabled"] is True
    grants = [b for b in resources("google_storage_bucket_iam_member").values() if "training_data" in b["bucket"]]
    assert not [g for g in grants if "allUsers" in g["member"] or "allAuthenticatedUsers" in g["member"]]


def test_the_check_may_create_objects_under_feedback_only() -> None:
    writer = resources("google_storage_bucket_iam_member")["feedback_writer"]

    assert unquote(writer["role"]) == "roles/storage.objectCreator"
    assert unquote(writer["condition"][0]["expression"]).endswith('/objects/${var.model_name}/feedback/\\")')
    writers = [
        name
        for name, grant in resources("google_storage_bucket_iam_member").items()
        if "training_data" in grant["bucket"] and unquote(grant["role"]) != "roles/storage.objectViewer"
    ]
    assert writers == ["feedback_writer"]


def test_feedback_export_query_has_its_composite_index() -> None:
    index = resources("google_firestore_index")["predictions_with_feedback"]

    # The query's own fields, in the export's code: its equality filter, then its range filter and order.
    code = (REPO_ROOT / "functions" / "retrain" / "feedback_export.py").read_text()
    queried = list(dict.fromkeys(re.findall(r'FieldFilter\("(\w+)"', code) + re.findall(r'order_by\("(\w+)"', code)))

    assert unquote(index["collection"]) == "predictions"
    assert queried == ["counted_as_evidence", "feedback_at"]
    assert [unquote(f["field_path"]) for f in index["fields"]] == queried


def variables_module(directory: Path) -> Path:
    """variables.tf's continuous-training variables alone: terraform plans them offline (no provider)."""
    names = r"training_\w+|auto_promote|retrain_\w+|feedback_export_interval_s"
    blocks = re.findall(
        rf'^variable "(?:{names})" \{{\n.*?^\}}\n', (TERRAFORM / "variables.tf").read_text(), re.M | re.S
    )
    (directory / "main.tf").write_text("\n".join(blocks))
    return directory


# -var values, and the variable whose validation refuses them (None: the plan passes).
VARIABLES = [
    ({}, None),
    ({"training_image": "europe-west1-docker.pkg.dev/p/sentiment/training:latest"}, "training_image"),
    ({"training_image": DIGEST[:-1]}, "training_image"),
    ({"auto_promote": "canary"}, None),
    ({"auto_promote": "always"}, "auto_promote"),
    ({"retrain_args": "--epochs 4 --seed 7"}, None),
    ({"retrain_args": "--epochs 4; rm -rf /"}, "retrain_args"),
    ({"retrain_min_interval_s": "0"}, None),
    ({"retrain_min_interval_s": "604801"}, "retrain_min_interval_s"),
    ({"retrain_min_feedback": "0"}, "retrain_min_feedback"),
    ({"retrain_min_feedback": "2.5"}, "retrain_min_feedback"),
    ({"feedback_export_interval_s": "-1"}, "feedback_export_interval_s"),
    ({"retrain_backoff_s": "59"}, "retrain_backoff_s"),
    ({"training_timeout_s": "604800"}, None),
    ({"training_timeout_s": "604801"}, "training_timeout_s"),
    ({"training_cpu": "3"}, "training_cpu"),
    ({"training_cpu": "8", "training_memory": "32Gi"}, None),
    ({"training_memory": "9Gi"}, "training_memory"),  # 2 vCPU: 8 GiB at most
    ({"training_cpu": "8", "training_memory": "2Gi"}, "training_memory"),  # 8 vCPU: 4 GiB at least
    ({"training_memory": "4096Mi"}, "training_memory"),
]


@pytest.mark.parametrize(("values", "rejected_by"), VARIABLES, ids=str)
def test_training_variables_are_checked_by_the_plan(tmp_path: Path, values: dict, rejected_by: str | None) -> None:
    module = variables_module(tmp_path)
    args = [f"-var={k}={v}" for k, v in {"training_image": DIGEST, **values}.items()]

    plan = subprocess.run(
        ["terraform", f"-chdir={module}", "plan", "-input=false", "-no-color", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert (plan.returncode == 0) == (rejected_by is None), plan.stdout + plan.stderr
    if rejected_by:
        assert f"{rejected_by} must" in plan.stderr


def test_outputs_name_the_data_bucket_and_the_job() -> None:
    outputs = {unquote(k) for block in parsed()["output"] for k in block}

    assert {"data_bucket", "training_job", "training_image", "retrain_url"} <= outputs
