"""One command for the whole Google Cloud deployment (`make deploy`) and its teardown (`make destroy`).

Functional core, imperative shell: `deploy_plan` and `destroy_plan` build the steps from the settings (pure), and
`execute` runs them through a runner that tests replace. Each step checks before it acts, so a second run changes
nothing and a failed run resumes where it stopped when run again. infra/terraform/README.md ("One command")
lists the steps with their manual equivalents; keep the two in step.

    python -m infra.deploy deploy --project my-project --region europe-west1 [--dry-run]
    python -m infra.deploy destroy --project my-project --region europe-west1 [--delete-state-bucket] [--yes]
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parents[1]
TERRAFORM_DIR = "infra/terraform"
MLFLOW_DIR = "infra/mlflow"
REPOSITORY = "sentiment"  # Artifact Registry repository of the MLflow and training images (terraform.tfvars.example)
STATE_PREFIX = "sentiment"  # backend.tf.example's prefix

# What must be on before Terraform can enable the rest (locals.tf `services`): Terraform's own API calls
# (serviceusage, cloudresourcemanager), the state bucket (storage), and the image build (artifactregistry,
# cloudbuild, run for the image's first deployment).
BOOTSTRAP_APIS = (
    "serviceusage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "storage.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "run.googleapis.com",
)

# MLflow's bootstrap (users, permissions, webhook) is infra/mlflow/bootstrap.py. Its interface lives here only:
# the script, the arguments that ask "is everything in place already?" (exit 0: yes), and the environment it is
# given, from Terraform's outputs (outputs.tf) and from Secret Manager (secrets.tf), read just before it runs.
BOOTSTRAP_SCRIPT = f"{MLFLOW_DIR}/bootstrap.py"
BOOTSTRAP_CHECK_ARGS = ("--check",)
BOOTSTRAP_ENV_FROM_OUTPUTS = {
    "MLFLOW_TRACKING_URI": "mlflow_url",
    "MLFLOW_WEBHOOK_URL": "registry_webhook_url",
}
BOOTSTRAP_ENV_FROM_SECRETS = {
    "MLFLOW_ADMIN_PASSWORD": "sentiment-mlflow-admin-password",
    "MLFLOW_WATCHER_PASSWORD": "sentiment-mlflow-watcher-password",
    "MLFLOW_TRAINER_PASSWORD": "sentiment-mlflow-trainer-password",
    "MLFLOW_WEBHOOK_SECRET": "sentiment-mlflow-webhook",
}

# The training image (training/Dockerfile, built by Cloud Build from the repository root with
# training/cloudbuild.yaml). Its tag is the hash of what the build reads, so an unchanged tree reuses the image and
# a changed one builds a new image; Terraform deploys it by digest (TF_VAR_training_image, read just before apply).
TRAINING_BUILD_CONFIG = "training/cloudbuild.yaml"
TRAINING_IMAGE_INPUTS = (
    "training/Dockerfile",
    "training/cloudbuild.yaml",
    "training/requirements.txt",
    "training/*.py",
    "lib/sentiment_core/src/sentiment_core/*.py",
)
DATA_PREFIX = "yelp-sentiment"  # the data bucket's folder: var.model_name (training.tf local.data_uri)
HOLDOUT_OBJECT = "holdout/eval-set.sha256"  # the deploy gate's evaluation texts, hashed: never trained on

# Terraform's outputs printed at the end of a deployment, in this order (load_balancer_ip: the A record of a domain).
URL_OUTPUTS = (
    "site_url",
    "predict_url",
    "feedback_url",
    "feedback_operator_url",
    "load_balancer_ip",
    "mlflow_url",
    "registry_watcher_url",
    "data_bucket",
    "training_job",
)

# Set for the teardown's last apply so that destroy may delete the stateful resources (variables.tf).
UNPROTECT_VARS = {"deletion_protection": "false"}

NETWORK = "sentiment"  # mlflow.tf google_compute_network.main
SQL_PEERING = "servicenetworking-googleapis-com"  # the peering Service Networking creates for Cloud SQL

PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")  # variables.tf project_id
REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
MEMBER = re.compile(r"^(user|group|serviceAccount):[^@\s]+@[^@\s]+$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")  # variables.tf alert_email


class UsageError(ValueError):
    """A setting is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a deployment needs to know; everything else is derived from it."""

    project: str
    region: str
    python: str = sys.executable
    initial_model_uri: str = ""
    delete_state_bucket: bool = False
    # The person running the deployment, as an IAM member: made an invoker of MLflow and of the watcher, which
    # the MLflow bootstrap and the operator commands need (a project owner has that right already).
    operator: str = ""
    # Where alert incidents are emailed (variables.tf alert_email); empty: no notification channel.
    alert_email: str = ""
    # The data the first training runs read, copied into the data bucket (default: training.data's folders).
    data_dir: str = ""
    ood_dir: str = ""

    def __post_init__(self) -> None:
        if not self.project or not self.region:
            missing = " and ".join(n for n, v in (("PROJECT", self.project), ("REGION", self.region)) if not v)
            raise UsageError(f"{missing} missing: make deploy PROJECT=my-project REGION=europe-west1")
        if not PROJECT_ID.match(self.project):
            raise UsageError(f"PROJECT {self.project!r} is not a project id (6-30 lowercase letters, digits, hyphens)")
        if not REGION.match(self.region):
            raise UsageError(f"REGION {self.region!r} is not a region such as europe-west1")
        if self.operator and not MEMBER.match(self.operator):
            raise UsageError(f"OPERATOR {self.operator!r} is not an IAM member such as user:me@example.com")
        if self.alert_email and not EMAIL.match(self.alert_email):
            raise UsageError(f"ALERT_EMAIL {self.alert_email!r} is not one email address such as ml-ops@example.com")

    @property
    def state_bucket(self) -> str:
        return f"{self.project}-tfstate"

    def mlflow_image(self, mlflow_version: str) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/{REPOSITORY}/mlflow:{mlflow_version}"

    def model_uri(self) -> str:
        return self.initial_model_uri or f"gs://{self.project}-staged-models/yelp-sentiment/v1"

    def training_image(self, tag: str) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/{REPOSITORY}/training:{tag}"

    @property
    def data_uri(self) -> str:
        """DATA_URI: name_prefix (= the project) + "-training-data" (storage.tf), folder var.model_name."""
        return f"gs://{self.project}-training-data/{DATA_PREFIX}/"


class Status(enum.Enum):
    DONE = "done"
    TODO = "todo"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""


@dataclasses.dataclass(frozen=True)
class CommandCheck:
    """A read-only command whose result says whether the step is done."""

    argv: tuple[str, ...]
    status: Callable[[Result], Status]


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """Done when this file (relative to the repository) exists."""

    path: str


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its check (None: always run, it is local and safe to repeat) and the command that does it.

    A step without a command only checks (a prerequisite); `hint` says what to do when it is not met.
    `env_from_outputs` maps environment variables of the command (and of its check) to Terraform outputs read just
    before; `env_from_commands` to the output of read-only commands (never printed).
    """

    name: str
    manual: str
    argv: tuple[str, ...] | None
    check: CommandCheck | FileCheck | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    env_from_outputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Variables whose value is a read-only command's output (a secret, an identity token), for the check too.
    env_from_commands: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    hint: str = ""


def exits_zero(result: Result) -> Status:
    return Status.DONE if result.returncode == 0 else Status.TODO


def exits_nonzero(result: Result) -> Status:
    return Status.TODO if result.returncode == 0 else Status.DONE


def plan_has_no_changes(result: Result) -> Status:
    """`terraform plan -detailed-exitcode`: 0 no changes, 2 changes, anything else an error."""
    return {0: Status.DONE, 2: Status.TODO}.get(result.returncode, Status.FAILED)


def state_is_empty(result: Result) -> Status:
    if result.returncode != 0:
        return Status.FAILED
    return Status.TODO if result.stdout.strip() else Status.DONE


# What `deletion_protection` guards (variables.tf): while any of them is in the state, the destroy needs the
# protection off first. Once they are gone, a destroy run again after a failure (Cloud Run holds the Direct VPC
# subnet's addresses for an hour or two) must not apply the whole configuration, which would re-create them.
PROTECTED = (
    "google_sql_database_instance.mlflow",
    "google_cloud_run_v2_service.mlflow",
    "google_firestore_database.main",
    "google_storage_bucket.mlflow_artifacts",
    "google_storage_bucket.staged_models",
    "google_storage_bucket.training_data",
)


def no_protected_resource_left(result: Result) -> Status:
    if result.returncode != 0:
        return Status.FAILED
    left = {line.strip() for line in result.stdout.splitlines()}
    return Status.TODO if left.intersection(PROTECTED) else Status.DONE


def peering_absent(result: Result) -> Status:
    """Done when the network lists no Cloud SQL peering, or is gone already (the list then fails)."""
    if result.returncode != 0:
        return Status.DONE
    return Status.TODO if SQL_PEERING in result.stdout.split() else Status.DONE


def all_enabled(apis: Sequence[str]) -> Callable[[Result], Status]:
    def status(result: Result) -> Status:
        if result.returncode != 0:
            return Status.FAILED
        return Status.DONE if set(apis) <= set(result.stdout.split()) else Status.TODO

    return status


def terraform(*args: str) -> tuple[str, ...]:
    return ("terraform", f"-chdir={TERRAFORM_DIR}", *args)


def terraform_vars(settings: Settings, mlflow_version: str) -> dict[str, str]:
    """The variables.tf values a deployment sets; the rest keep their defaults or come from terraform.tfvars."""
    return {
        "project_id": settings.project,
        "region": settings.region,
        "name_prefix": settings.project,
        "mlflow_image": settings.mlflow_image(mlflow_version),
        "initial_model_uri": settings.model_uri(),
        **(
            {name: json.dumps([settings.operator]) for name in ("mlflow_invokers", "watcher_invokers")}
            if settings.operator
            else {}
        ),
        **({"alert_email": settings.alert_email} if settings.alert_email else {}),
    }


def var_args(values: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(f"-var={name}={value}" for name, value in values.items())


def gcloud(settings: Settings, *args: str) -> tuple[str, ...]:
    return ("gcloud", *args, f"--project={settings.project}")


def common_steps(settings: Settings) -> list[Step]:
    """Prerequisites, APIs, state bucket and `terraform init`: what deploy and destroy both need."""
    bucket = f"gs://{settings.state_bucket}"
    return [
        Step(
            name="project",
            manual=f"gcloud projects describe {settings.project}",
            argv=None,
            check=CommandCheck(("gcloud", "projects", "describe", settings.project), exits_zero),
            hint=(
                f"create the project and link billing: gcloud projects create {settings.project} && "
                f"gcloud billing projects link {settings.project} --billing-account=XXXXXX-XXXXXX-XXXXXX"
            ),
        ),
        Step(
            name="credentials",
            manual="gcloud auth application-default login",
            argv=None,
            check=CommandCheck(("gcloud", "auth", "application-default", "print-access-token"), exits_zero),
            hint="Terraform uses application-default credentials: run gcloud auth application-default login",
        ),
        Step(
            name="apis",
            manual=f"gcloud services enable {' '.join(BOOTSTRAP_APIS)} --project={settings.project}",
            argv=gcloud(settings, "services", "enable", *BOOTSTRAP_APIS),
            check=CommandCheck(
                gcloud(settings, "services", "list", "--enabled", "--format=value(config.name)"),
                all_enabled(BOOTSTRAP_APIS),
            ),
        ),
        Step(
            name="state-bucket",
            manual=(
                f"gcloud storage buckets create {bucket} --location={settings.region} "
                "--uniform-bucket-level-access --public-access-prevention"
            ),
            argv=gcloud(
                settings,
                "storage",
                "buckets",
                "create",
                bucket,
                f"--location={settings.region}",
                "--uniform-bucket-level-access",
                "--public-access-prevention",
            ),
            check=CommandCheck(gcloud(settings, "storage", "buckets", "describe", bucket), exits_zero),
        ),
        Step(
            name="backend",
            manual=f"cp {TERRAFORM_DIR}/backend.tf.example {TERRAFORM_DIR}/backend.tf",
            argv=("cp", f"{TERRAFORM_DIR}/backend.tf.example", f"{TERRAFORM_DIR}/backend.tf"),
            check=FileCheck(f"{TERRAFORM_DIR}/backend.tf"),
        ),
        Step(
            name="terraform-init",
            manual=f"cd {TERRAFORM_DIR} && terraform init -backend-config=bucket={settings.state_bucket}",
            # -reconfigure: the bucket given here wins over backend.tf's and over a previous project's.
            argv=terraform(
                "init",
                "-input=false",
                "-reconfigure",
                f"-backend-config=bucket={settings.state_bucket}",
                f"-backend-config=prefix={STATE_PREFIX}",
            ),
        ),
    ]


def training_image_tag(root: Path) -> str:
    """The hash of every file the training image is built from (TRAINING_IMAGE_INPUTS), as an image tag."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in TRAINING_IMAGE_INPUTS for p in root.glob(pattern)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "src-" + digest.hexdigest()[:20]


def git_commit(root: Path) -> str:
    """The commit the image is built from (its GIT_COMMIT), with -dirty when the tree has changes; "unknown"
    outside a git work tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def default_data_dirs() -> tuple[str, str]:
    """training.data's default training data and out-of-domain folders: what a default run trains and scores on."""
    from training import data

    return str(data.DEFAULT_DATA_DIR), str(data.DEFAULT_OOD_DIR)


def data_steps(settings: Settings) -> list[Step]:
    """After the apply: the default data, its out-of-domain sets and the evaluation set's hashes in the data bucket,
    each copied once (a later change of the data is an upload by hand, which the retrain check notices)."""
    data_dir, ood_dir = settings.data_dir, settings.ood_dir
    if not data_dir or not ood_dir:
        data_dir, ood_dir = default_data_dirs()
    holdout = settings.data_uri + HOLDOUT_OBJECT
    steps = []
    for name, source, folder in (("training-data", data_dir, "yelp"), ("ood-sets", ood_dir, "ood")):
        target = f"{settings.data_uri}{folder}/"
        steps.append(
            Step(
                name=name,
                manual=f"gcloud storage rsync --recursive {source} {target}",
                argv=gcloud(settings, "storage", "rsync", "--recursive", source, target),
                check=CommandCheck(gcloud(settings, "storage", "ls", target), exits_zero),
            )
        )
    eval_args = ("-m", "training.eval_set", "--output", "build/eval-set.jsonl", "--data", data_dir)
    steps.append(
        Step(
            # The evaluation set is a deterministic sample of the default data's test split: the same texts as the
            # one staged at eval_set_uri (README "Deploying"), whose hashes training must drop.
            name="holdout-hashes",
            manual=f"python {' '.join(eval_args)} --hashes-output {holdout}",
            argv=(settings.python, *eval_args, "--hashes-output", holdout),
            check=CommandCheck(gcloud(settings, "storage", "ls", holdout), exits_zero),
            env={"GOOGLE_CLOUD_PROJECT": settings.project},
        )
    )
    return steps


def deploy_plan(settings: Settings, mlflow_version: str, training_tag: str = "", commit: str = "unknown") -> list[Step]:
    """Every step of a first deployment, in order; on a deployed project every check says done."""
    image = settings.mlflow_image(mlflow_version)
    training_image = settings.training_image(training_tag or "latest-build")
    tf_vars = var_args(terraform_vars(settings, mlflow_version))
    # The digest of the image just built: Terraform deploys the job by digest, never by a tag that can move.
    image_digest = {
        "TF_VAR_training_image": gcloud(
            settings,
            "artifacts",
            "docker",
            "images",
            "describe",
            training_image,
            "--format=value(image_summary.fully_qualified_digest)",
        )
    }
    bootstrap_env = {"GOOGLE_CLOUD_PROJECT": settings.project, "REGION": settings.region}
    return [
        *common_steps(settings),
        Step(
            name="image-repository",
            manual=(
                f"gcloud artifacts repositories create {REPOSITORY} --repository-format=docker "
                f"--location={settings.region}"
            ),
            argv=gcloud(
                settings,
                "artifacts",
                "repositories",
                "create",
                REPOSITORY,
                "--repository-format=docker",
                f"--location={settings.region}",
            ),
            check=CommandCheck(
                gcloud(settings, "artifacts", "repositories", "describe", REPOSITORY, f"--location={settings.region}"),
                exits_zero,
            ),
        ),
        Step(
            name="mlflow-image",
            manual=f"gcloud builds submit {MLFLOW_DIR} --tag {image}",
            argv=gcloud(settings, "builds", "submit", MLFLOW_DIR, f"--tag={image}"),
            check=CommandCheck(gcloud(settings, "artifacts", "docker", "images", "describe", image), exits_zero),
        ),
        Step(
            name="training-image",
            manual=(
                f"gcloud builds submit --config={TRAINING_BUILD_CONFIG} "
                f"--substitutions=_IMAGE={training_image},_GIT_COMMIT=$(git rev-parse HEAD) ."
            ),
            argv=gcloud(
                settings,
                "builds",
                "submit",
                f"--config={TRAINING_BUILD_CONFIG}",
                f"--substitutions=_IMAGE={training_image},_GIT_COMMIT={commit}",
                ".",
            ),
            check=CommandCheck(
                gcloud(settings, "artifacts", "docker", "images", "describe", training_image), exits_zero
            ),
        ),
        Step(name="bundles", manual="make bundles", argv=("make", "bundles")),
        Step(
            name="terraform-apply",
            manual=(
                f'cd {TERRAFORM_DIR} && TF_VAR_training_image="$(gcloud artifacts docker images describe '
                f"{training_image} --format='value(image_summary.fully_qualified_digest)')\" "
                f"terraform apply {' '.join(tf_vars)}"
            ),
            argv=terraform("apply", "-input=false", "-auto-approve", *tf_vars),
            check=CommandCheck(terraform("plan", "-input=false", "-detailed-exitcode", *tf_vars), plan_has_no_changes),
            env_from_commands=image_digest,
        ),
        *data_steps(settings),
        Step(
            name="mlflow-bootstrap",
            manual=" ".join(
                [*(f"{k}={v}" for k, v in bootstrap_env.items())]
                + [f'{k}="$(terraform output -raw {v})"' for k, v in BOOTSTRAP_ENV_FROM_OUTPUTS.items()]
                + [
                    f'{k}="$(gcloud secrets versions access latest --secret={v})"'
                    for k, v in BOOTSTRAP_ENV_FROM_SECRETS.items()
                ]
                + ['MLFLOW_IAM_TOKEN="$(gcloud auth print-identity-token)"']
                + ["python", BOOTSTRAP_SCRIPT]
            ),
            argv=(settings.python, BOOTSTRAP_SCRIPT),
            check=CommandCheck((settings.python, BOOTSTRAP_SCRIPT, *BOOTSTRAP_CHECK_ARGS), exits_zero),
            env=bootstrap_env,
            env_from_outputs=BOOTSTRAP_ENV_FROM_OUTPUTS,
            env_from_commands={
                **{
                    var: gcloud(settings, "secrets", "versions", "access", "latest", f"--secret={secret}")
                    for var, secret in BOOTSTRAP_ENV_FROM_SECRETS.items()
                },
                # MLflow sits behind Cloud Run IAM: the operator's identity rides beside MLflow's basic auth.
                "MLFLOW_IAM_TOKEN": ("gcloud", "auth", "print-identity-token"),
            },
        ),
    ]


def destroy_plan(settings: Settings, mlflow_version: str) -> list[Step]:
    """Everything `deploy_plan` made, removed, so that a new deployment starts from a project Terraform accepts."""
    tf_vars = var_args(terraform_vars(settings, mlflow_version))
    unprotect = var_args(UNPROTECT_VARS)
    state_empty = CommandCheck(terraform("state", "list"), state_is_empty)
    # The image the deployment runs, as the state has it: a destroy must not deploy another one first.
    deployed_image = {"TF_VAR_training_image": "training_image"}
    steps = [
        *(s for s in common_steps(settings) if s.name not in ("apis", "state-bucket")),
        # Terraform reads the functions' bundles (functions.tf archive_file) to plan a destroy too.
        Step(name="bundles", manual="make bundles", argv=("make", "bundles")),
        Step(
            name="unprotect",
            manual=f"cd {TERRAFORM_DIR} && terraform apply {' '.join(tf_vars + unprotect)}",
            argv=terraform("apply", "-input=false", "-auto-approve", *tf_vars, *unprotect),
            check=CommandCheck(terraform("state", "list"), no_protected_resource_left),
            env_from_outputs=deployed_image,
        ),
        Step(
            # Cloud SQL's private-services peering outlives the abandoned connection and blocks deleting the
            # network: removed from the VPC's side first (MLflow's database is about to go anyway).
            name="sql-peering",
            manual=f"gcloud compute networks peerings delete {SQL_PEERING} --network={NETWORK}",
            argv=gcloud(settings, "compute", "networks", "peerings", "delete", SQL_PEERING, f"--network={NETWORK}"),
            check=CommandCheck(
                gcloud(
                    settings, "compute", "networks", "peerings", "list", f"--network={NETWORK}", "--format=value(name)"
                ),
                peering_absent,
            ),
        ),
        Step(
            name="terraform-destroy",
            manual=f"cd {TERRAFORM_DIR} && terraform destroy {' '.join(tf_vars + unprotect)}",
            argv=terraform("destroy", "-input=false", "-auto-approve", *tf_vars, *unprotect),
            check=state_empty,
            env_from_outputs=deployed_image,
        ),
        Step(
            # A database Terraform abandons makes the next apply fail with 409.
            name="firestore",
            manual="gcloud firestore databases delete --database='(default)'",
            argv=gcloud(settings, "firestore", "databases", "delete", "--database=(default)", "--quiet"),
            check=CommandCheck(
                gcloud(settings, "firestore", "databases", "describe", "--database=(default)"), exits_nonzero
            ),
        ),
        Step(
            name="image-repository",
            manual=f"gcloud artifacts repositories delete {REPOSITORY} --location={settings.region}",
            argv=gcloud(
                settings, "artifacts", "repositories", "delete", REPOSITORY, f"--location={settings.region}", "--quiet"
            ),
            check=CommandCheck(
                gcloud(settings, "artifacts", "repositories", "describe", REPOSITORY, f"--location={settings.region}"),
                exits_nonzero,
            ),
        ),
    ]
    if settings.delete_state_bucket:
        bucket = f"gs://{settings.state_bucket}"
        steps.append(
            Step(
                name="state-bucket",
                manual=f"gcloud storage rm --recursive {bucket}",
                argv=gcloud(settings, "storage", "rm", "--recursive", bucket),
                check=CommandCheck(gcloud(settings, "storage", "buckets", "describe", bucket), exits_nonzero),
            )
        )
    return steps


class Runner(Protocol):
    def __call__(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, capture: bool = False
    ) -> Result: ...


def run_command(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, capture: bool = False
) -> Result:
    """The real runner: checks are captured, actions stream to the terminal. `env` adds to this environment."""
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(list(argv), cwd=cwd, env=full_env, capture_output=capture, text=True, check=False)
    except FileNotFoundError:
        return Result(127, "", f"{argv[0]}: command not found")
    return Result(done.returncode, done.stdout or "", done.stderr or "")


class StepFailed(RuntimeError):
    """A step could not be done; the message names it, the command and how to resume."""


def outputs(runner: Runner, root: Path) -> dict[str, str]:
    result = runner(terraform("output", "-json"), cwd=root, capture=True)
    if result.returncode != 0:
        raise StepFailed(f"terraform output -json failed: {result.stderr.strip()}")
    return {name: entry["value"] for name, entry in json.loads(result.stdout or "{}").items()}


def quoted(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def execute(steps: Sequence[Step], runner: Runner, root: Path, resume: str, say: Callable[[str], None]) -> None:
    """Check each step, do it if needed; the first failure raises StepFailed with the way to resume."""
    for number, step in enumerate(steps, 1):
        label = f"[{number}/{len(steps)}] {step.name}"
        env = step_env(step, runner, root) if step.env_from_outputs or step.env_from_commands else dict(step.env)
        status, result = check(step, runner, root, env)
        if status is Status.DONE:
            say(f"{label}: already done")
            continue
        if step.argv is None or status is Status.FAILED:
            command = quoted(step.check.argv) if isinstance(step.check, CommandCheck) else step.manual
            raise StepFailed(
                f"{label} failed: its check `{command}` did not pass. {result.stderr.strip()} {step.hint}".rstrip()
                + f"\nThen run `{resume}` again: steps already done are skipped."
            )
        say(f"{label}: {quoted(step.argv)}")
        result = runner(step.argv, cwd=root, env=env)
        if result.returncode != 0:
            raise StepFailed(
                f"{label} failed: `{quoted(step.argv)}` exited {result.returncode}. {result.stderr.strip()}".rstrip()
                + f"\nFix the cause, then run `{resume}` again: steps already done are skipped."
            )


def step_env(step: Step, runner: Runner, root: Path) -> dict[str, str]:
    """The step's environment: its fixed values, Terraform's outputs, and the read-only commands' answers."""
    env = dict(step.env)
    if step.env_from_outputs:
        values = outputs(runner, root)
        env.update({var: str(values.get(output, "")) for var, output in step.env_from_outputs.items()})
    for var, argv in step.env_from_commands.items():
        result = runner(argv, cwd=root, capture=True)
        if result.returncode != 0:
            raise StepFailed(f"{step.name}: `{quoted(argv)}` failed (for {var}): {result.stderr.strip()}")
        env[var] = result.stdout.strip()
    return env


def check(step: Step, runner: Runner, root: Path, env: Mapping[str, str] | None = None) -> tuple[Status, Result]:
    """The step's status, and the check command's result (empty for file checks and unchecked steps)."""
    if step.check is None:
        return Status.TODO, Result(0)
    if isinstance(step.check, FileCheck):
        return (Status.DONE if (root / step.check.path).exists() else Status.TODO), Result(0)
    result = runner(step.check.argv, cwd=root, capture=True, env=env or None)
    return step.check.status(result), result


def describe(steps: Sequence[Step]) -> str:
    """The plan as text, for --dry-run: each step, its check and its command."""
    lines = []
    for number, step in enumerate(steps, 1):
        lines.append(f"{number}. {step.name}")
        if isinstance(step.check, CommandCheck):
            lines.append(f"   check: {quoted(step.check.argv)}")
        elif isinstance(step.check, FileCheck):
            lines.append(f"   check: test -e {step.check.path}")
        if step.argv is not None:
            lines.append(f"   run:   {quoted(step.argv)}")
        else:
            lines.append(f"   if not: {step.hint}")
        for var, output in step.env_from_outputs.items():
            lines.append(f"   env:   {var} = terraform output {output}")
        for var, argv in step.env_from_commands.items():
            lines.append(f"   env:   {var} = $({quoted(argv)})")
    return "\n".join(lines)


def mlflow_version(root: Path) -> str:
    """The MLflow release the image's lock pins (infra/mlflow/requirements.txt), which is also the image's tag."""
    lock = root / MLFLOW_DIR / "requirements.txt"
    found = re.search(r"^mlflow==([0-9]+\.[0-9]+\.[0-9]+)", lock.read_text(), re.M)
    if not found:
        raise UsageError(f"{lock} pins no mlflow release (mlflow==X.Y.Z)")
    return found.group(1)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["deploy", "destroy"], help="deploy everything, or tear it all down")
    parser.add_argument("--project", default="", help="Google Cloud project id (it must exist, with billing)")
    parser.add_argument("--region", default="", help="region of everything, e.g. europe-west1")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--initial-model-uri", default="", help="predict's first MODEL_URI (default: v1 staged)")
    parser.add_argument(
        "--delete-state-bucket", action="store_true", help="destroy: remove the Terraform state bucket too"
    )
    parser.add_argument("--yes", action="store_true", help="destroy: do not ask for the project id to confirm")
    parser.add_argument(
        "--operator",
        default="",
        help="you, as an IAM member (user:me@example.com): may invoke MLflow (the bootstrap) and the watcher",
    )
    parser.add_argument(
        "--data-dir", default="", help="the training data copied into the data bucket (default: training.data's)"
    )
    parser.add_argument(
        "--ood-dir", default="", help="the out-of-domain sets copied beside it (default: training.data's)"
    )
    parser.add_argument(
        "--alert-email",
        default="",
        help="email address alert incidents are sent to (terraform variable alert_email; default: none)",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None,
    runner: Runner = run_command,
    root: Path = REPO_ROOT,
    say: Callable[[str], None] = print,
    ask: Callable[[str], str] = input,
) -> int:
    """Command line: 0 when every step is done, 1 when a step failed, 2 on a usage error."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings(
            project=args.project,
            region=args.region,
            initial_model_uri=args.initial_model_uri,
            delete_state_bucket=args.delete_state_bucket,
            operator=args.operator,
            alert_email=args.alert_email,
            data_dir=args.data_dir,
            ood_dir=args.ood_dir,
        )
        version = mlflow_version(root)
    except UsageError as exc:
        say(f"usage error: {exc}")
        return 2
    if args.action == "deploy":
        steps = deploy_plan(settings, version, training_image_tag(root), git_commit(root))
    else:
        steps = destroy_plan(settings, version)
    if args.dry_run:
        say(describe(steps))
        if args.action == "deploy":
            say(f"then: {quoted(terraform('output', '-json'))} ({', '.join(URL_OUTPUTS)})")
        return 0
    question = f"Destroy everything in project {settings.project}? Type its id to confirm: "
    if args.action == "destroy" and not args.yes and ask(question).strip() != settings.project:
        say("not confirmed: nothing done")
        return 1
    resume = f"make {args.action} PROJECT={settings.project} REGION={settings.region}"
    try:
        execute(steps, runner, root, resume, say)
        if args.action == "deploy":
            values = outputs(runner, root)
            say("\n".join(f"{name}: {values[name]}" for name in URL_OUTPUTS if name in values))
    except StepFailed as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
