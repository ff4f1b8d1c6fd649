"""Offline checks that a first `terraform apply` on a fresh project, and a destroy then apply, go through
(issue #18): each one names the problem it guards and fails on the configuration before its fix."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.infra.terraform_config import TERRAFORM, functions, locals_, parsed, public_functions, resources, unquote


def depends_on(body: dict) -> set[str]:
    return {re.sub(r"^\$\{|\}$", "", str(item)) for item in body.get("depends_on", [])}


def variables() -> dict[str, dict]:
    return {unquote(k): v for block in parsed()["variable"] for k, v in block.items()}


# API of each resource type prefix the configuration uses: the API must be in local.services.
API_OF_RESOURCE = {
    "google_artifact_registry": "artifactregistry.googleapis.com",
    "google_cloudfunctions2": "cloudfunctions.googleapis.com",
    "google_cloud_run_v2": "run.googleapis.com",
    "google_cloud_scheduler": "cloudscheduler.googleapis.com",
    "google_billing_budget": "billingbudgets.googleapis.com",
    "google_compute": "compute.googleapis.com",
    "google_firestore": "firestore.googleapis.com",
    "google_logging": "logging.googleapis.com",
    "google_monitoring": "monitoring.googleapis.com",
    "google_project_iam": "cloudresourcemanager.googleapis.com",
    "google_project": "cloudresourcemanager.googleapis.com",  # the data source: the project's number
    "google_project_service_identity": "serviceusage.googleapis.com",  # bootstrap enables it (README step 1)
    "google_project_service": "serviceusage.googleapis.com",
    "google_pubsub": "pubsub.googleapis.com",
    "google_secret_manager": "secretmanager.googleapis.com",
    "google_service_account": "iam.googleapis.com",
    "google_service_networking": "servicenetworking.googleapis.com",
    "google_sql": "sqladmin.googleapis.com",
    "google_storage": "storage.googleapis.com",
}
BOOTSTRAP_APIS = {"serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com"}
# Used by the deployment besides the resources' own APIs: builds (Cloud Build, Artifact Registry), their logs.
USED_BY_THE_PLATFORM = {"cloudbuild.googleapis.com", "artifactregistry.googleapis.com", "logging.googleapis.com"}


def resource_types() -> set[str]:
    return {unquote(kind) for block in parsed()["resource"] for kind in block} | {
        unquote(kind) for block in parsed().get("data", []) for kind in block
    }


def test_problem_8_every_api_the_deployment_uses_is_enabled() -> None:
    enabled = set(re.findall(r"[\w.-]+\.googleapis\.com", str(locals_()["services"])))
    needed = set(USED_BY_THE_PLATFORM)
    unknown = []
    for kind in resource_types() - {"random_password", "random_id", "archive_file"}:
        prefixes = [p for p in API_OF_RESOURCE if kind.startswith(p)]
        if not prefixes:
            unknown.append(kind)
            continue
        needed.add(API_OF_RESOURCE[max(prefixes, key=len)])

    assert unknown == []  # a new kind of resource: name its API above
    assert needed - BOOTSTRAP_APIS - enabled == set()


def test_problem_2_cloud_sql_names_an_edition_that_accepts_its_tier() -> None:
    instance = resources("google_sql_database_instance")["mlflow"]
    settings = instance["settings"][0]
    tier = unquote(variables()["sql_tier"]["default"])

    assert unquote(settings["edition"]) == "ENTERPRISE"
    assert tier.startswith(("db-g1-", "db-f1-", "db-custom-"))  # tiers of ENTERPRISE (db-perf-optimized-*: PLUS)


def test_problem_5_operators_reach_the_watcher_through_iam_while_the_receiver_stays_internal() -> None:
    specs = functions()
    invokers = str(locals_()["invokers"])

    assert specs["registry-watcher"]["ingress"] == "ALLOW_ALL"
    assert "registry-watcher" not in public_functions()  # Cloud Run IAM still decides
    assert specs["registry-webhook"]["ingress"] == "ALLOW_INTERNAL_ONLY"
    assert specs["on-production-changed"]["ingress"] == "ALLOW_INTERNAL_ONLY"
    assert "var.watcher_invokers" in invokers
    assert '"registry-watcher"' in invokers
    assert "allUsers" in str(variables()["watcher_invokers"]["validation"])  # refused there


@pytest.mark.parametrize("member", ["user:ops@example.com", "group:ml-ops@example.com"])
def test_problem_5_watcher_invokers_accept_principals(member: str) -> None:
    (condition,) = [v["condition"] for v in variables()["watcher_invokers"]["validation"]]
    pattern = re.search(r'regex\("([^"]+)"', condition).group(1)

    assert re.search(pattern, member)
    assert not re.search(pattern, "allUsers")


def test_problem_6_functions_build_into_the_configurations_repository_and_it_is_granted() -> None:
    build = resources("google_cloudfunctions2_function")["main"]["build_config"][0]
    readers = resources("google_artifact_registry_repository_iam_member")

    assert unquote(resources("google_artifact_registry_repository")["functions"]["format"]) == "DOCKER"
    assert build["docker_repository"] == "${google_artifact_registry_repository.functions.id}"
    assert unquote(readers["run_agent_reader"]["role"]) == "roles/artifactregistry.reader"
    assert readers["run_agent_reader"]["member"] == "${local.run_agent}"
    assert "serverless-robot-prod" in locals_()["run_agent"]


def test_problem_6_the_redeployer_may_read_the_operations_it_waits_on() -> None:
    role = resources("google_project_iam_custom_role")["run_operation_reader"]
    grant = resources("google_project_iam_member")["redeployer_operations"]
    deployer = (TERRAFORM.parents[1] / "functions/redeploy/deployers.py").read_text()

    assert "operation.result(" in deployer  # polls operations.get
    assert [unquote(p) for p in role["permissions"]] == ["run.operations.get"]
    assert grant["role"] == "${google_project_iam_custom_role.run_operation_reader.id}"
    assert 'google_service_account.main["redeployer"]' in grant["member"]


def test_problem_7_functions_are_built_as_a_dedicated_account_granted_before_the_build() -> None:
    function = resources("google_cloudfunctions2_function")["main"]
    needed = {
        "google_project_iam_member.build_log_writer",
        "google_artifact_registry_repository_iam_member.build_writer",
        "google_storage_bucket_iam_member.build_source_reader",
    }

    assert function["build_config"][0]["service_account"] == '${google_service_account.main["build"].id}'
    assert "build" in locals_()["service_accounts"]
    assert needed <= depends_on(function)


def test_problem_10_a_destroy_then_apply_finds_nothing_left_in_its_way() -> None:
    firestore = resources("google_firestore_database")["main"]
    connection = resources("google_service_networking_connection")["sql"]
    instance = resources("google_sql_database_instance")["mlflow"]
    buckets = resources("google_storage_bucket")

    assert unquote(firestore["deletion_policy"]) == "DELETE"  # ABANDON: the next apply gets 409
    assert unquote(connection["deletion_policy"]) == "ABANDON"
    assert connection["update_on_creation_fail"] is True
    assert "${random_id.sql_instance.hex}" in instance["name"]  # a deleted name is taken for a week
    assert instance["deletion_protection"] == "${var.deletion_protection}"
    assert resources("google_cloud_run_v2_service")["mlflow"]["deletion_protection"] == "${var.deletion_protection}"
    assert {name: b["force_destroy"] for name, b in buckets.items() if b["force_destroy"] is not True} == {
        "mlflow_artifacts": "${!var.deletion_protection}",
        "staged_models": "${!var.deletion_protection}",
        "eval_sets": "${!var.deletion_protection}",
        "training_data": "${!var.deletion_protection}",
    }


def test_problem_11_functions_wait_for_their_secret_bindings_and_mlflow_for_its_database() -> None:
    function = resources("google_cloudfunctions2_function")["main"]
    mlflow = resources("google_cloud_run_v2_service")["mlflow"]

    assert "google_secret_manager_secret_iam_member.reader" in depends_on(function)
    assert {
        "google_secret_manager_secret_iam_member.reader",
        "google_sql_database.mlflow",
        "google_sql_user.mlflow",
    } <= depends_on(mlflow)


def test_problem_11_the_pubsub_agent_is_created_before_the_grants_that_name_it() -> None:
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    identity = resources("google_project_service_identity")["pubsub"]

    assert unquote(identity["service"]) == "pubsub.googleapis.com"
    assert "gcp-sa-pubsub" not in text  # a literal agent address would not wait for it
    assert text.count("local.pubsub_agent") == 3  # token creator, dead-letter publisher and subscriber


def test_problem_11_access_logs_can_be_written() -> None:
    grant = resources("google_storage_bucket_iam_member")["access_log_writer"]

    assert grant["bucket"] == "${google_storage_bucket.access_logs.name}"
    assert unquote(grant["role"]) == "roles/storage.objectCreator"
    assert unquote(grant["member"]) == "group:cloud-storage-analytics@google.com"


def test_problem_11_every_function_sets_the_variable_cloud_functions_adds() -> None:
    env = resources("google_cloudfunctions2_function")["main"]["service_config"][0]["environment_variables"]

    assert re.fullmatch(r'\$\{merge\(local\.function_env\[each\.key\], \{"?LOG_EXECUTION_ID"? = "true"\}\)\}', env)


def secret_readers(directory: Path) -> set[tuple[str, str]]:
    """(service account, secret) of iam.tf's local.secret_readers, evaluated by terraform (it is all literals)."""
    (block,) = re.findall(r"^  secret_readers = merge\(\n.*?^  \)\n", (TERRAFORM / "iam.tf").read_text(), re.M | re.S)
    (directory / "main.tf").write_text("locals {\n" + block + "}\n")
    result = subprocess.run(
        ["terraform", f"-chdir={directory}", "console", "-no-color"],
        input="jsonencode(local.secret_readers)\n",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {(grant["sa"], grant["secret_name"]) for grant in json.loads(json.loads(result.stdout)).values()}


SECRET_REFERENCE = re.compile(r'google_secret_manager_secret\.main\["([a-z0-9-]+)"\]')


def test_problem_1_every_secret_a_service_reads_is_granted_to_its_account(tmp_path: Path) -> None:
    granted = secret_readers(tmp_path)
    mlflow_reads = {("mlflow", name) for name in SECRET_REFERENCE.findall((TERRAFORM / "mlflow.tf").read_text())}
    account_of = {"on-production-changed": "redeployer"}
    function_secrets = locals_()["function_secrets"]
    watcher_secrets = locals_()["watcher_secrets"]
    functions_read = {
        (account_of.get(function, function), name)
        for function, secrets in function_secrets.items()
        for value in (watcher_secrets if secrets == "${local.watcher_secrets}" else secrets).values()
        for name in SECRET_REFERENCE.findall(value)
    }

    assert ("mlflow", "mlflow-flask-secret-key") in mlflow_reads  # the check sees what MLflow reads
    assert ("registry-webhook", "mlflow-webhook") in functions_read
    assert mlflow_reads | functions_read <= granted, sorted((mlflow_reads | functions_read) - granted)
