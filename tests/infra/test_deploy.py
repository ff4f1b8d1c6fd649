"""infra/deploy.py (`make deploy`, `make destroy`) against local stand-ins of gcloud, terraform, gsutil and make.

The stand-ins (tests/infra/fake_cloud.py) come first on PATH, log every call and remember what they created, so
the real command runner runs here, with no network: a second deployment must find every step done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from infra import deploy

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_cloud.py")
TOOLS = ("gcloud", "terraform", "gsutil", "make")
ARGS = ["--project", "my-sentiment-project", "--region", "europe-west1"]

FAKE_BOOTSTRAP = """\
import json, os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_STATE"]) / "bootstrapped"
with open(os.environ["FAKE_LOG"], "a") as log:
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_WEBHOOK_URL", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WATCHER_PASSWORD",
             "MLFLOW_TRAINER_PASSWORD", "MLFLOW_WEBHOOK_SECRET", "MLFLOW_IAM_TOKEN", "GOOGLE_CLOUD_PROJECT", "REGION")
    env = {k: os.environ.get(k) for k in names}
    log.write(json.dumps({"tool": "bootstrap", "args": sys.argv[1:], "env": env}) + "\\n")
if "--check" in sys.argv:
    sys.exit(0 if state.exists() else 1)
state.touch()
"""


# training.eval_set as the holdout-hashes step runs it (`python -m training.eval_set` in the repository): it
# "writes" the hashes object where the fake gcloud's `storage ls` finds it.
FAKE_EVAL_SET = """\
import json, os, pathlib, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": "eval_set", "args": sys.argv[1:], "env": {}}) + "\\n")
target = sys.argv[sys.argv.index("--hashes-output") + 1]
(pathlib.Path(os.environ["FAKE_STATE"]) / "object").mkdir(exist_ok=True)
(pathlib.Path(os.environ["FAKE_STATE"]) / "object" / target.replace("/", "_")).touch()
"""

DIGEST = "europe-west1-docker.pkg.dev/my-sentiment-project/sentiment/training@sha256:" + "ab" * 32


class Cloud:
    """The stand-ins' log and state, and the repository copy the deployment runs in."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "repo"
        self.log = tmp_path / "calls.jsonl"
        self.state = tmp_path / "state"
        self.state.mkdir()
        (self.root / "infra" / "mlflow").mkdir(parents=True)
        (self.root / "infra" / "terraform").mkdir(parents=True)
        shutil.copy(REPO_ROOT / "infra/mlflow/Dockerfile", self.root / "infra/mlflow/Dockerfile")
        shutil.copy(REPO_ROOT / "infra/mlflow/requirements.txt", self.root / "infra/mlflow/requirements.txt")
        shutil.copy(REPO_ROOT / "infra/terraform/backend.tf.example", self.root / "infra/terraform/")
        (self.root / deploy.BOOTSTRAP_SCRIPT).write_text(FAKE_BOOTSTRAP)
        (self.root / "training").mkdir()
        for name in ("Dockerfile", "cloudbuild.yaml", "requirements.txt"):
            shutil.copy(REPO_ROOT / "training" / name, self.root / "training" / name)
        (self.root / "training" / "eval_set.py").write_text(FAKE_EVAL_SET)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def commands(self) -> list[str]:
        return [" ".join([c["tool"], *c["args"]]) for c in self.calls()]

    def mutating(self) -> list[str]:
        verbs = {"create", "enable", "submit", "delete", "rm", "rsync", "apply", "destroy"}
        return [
            " ".join([c["tool"], *c["args"]])
            for c in self.calls()
            if verbs.intersection(c["args"])
            or (c["tool"] == "bootstrap" and "--check" not in c["args"])
            or c["tool"] == "eval_set"
        ]

    def reset_log(self) -> None:
        self.log.unlink(missing_ok=True)

    def main(self, *argv: str) -> tuple[int, str]:
        said: list[str] = []
        code = deploy.main(list(argv), root=self.root, say=said.append, ask=lambda _: "")
        return code, "\n".join(said)


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # This interpreter, not `env python3`: a version manager's shim would add a quarter second to every call.
    script = f"#!{sys.executable}\n" + FAKE.read_text()
    for tool in TOOLS:
        (bin_dir / tool).write_text(script)
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    world = Cloud(tmp_path)
    monkeypatch.setenv("FAKE_LOG", str(world.log))
    monkeypatch.setenv("FAKE_STATE", str(world.state))
    for tool in TOOLS:  # the real gcloud is installed here: it must never be the one that runs
        assert shutil.which(tool) == str(bin_dir / tool)
    return world


def test_deploy_fresh_project_runs_every_step_in_order(cloud: Cloud) -> None:
    training_image = f"europe-west1-docker.pkg.dev/my-sentiment-project/sentiment/training:{tag(cloud)}"
    data_dir, ood_dir = deploy.default_data_dirs()

    code, said = cloud.main("deploy", *ARGS)

    assert code == 0, said
    assert cloud.mutating() == [
        "gcloud services enable " + " ".join(deploy.BOOTSTRAP_APIS) + " --project=my-sentiment-project",
        "gcloud storage buckets create gs://my-sentiment-project-tfstate --location=europe-west1"
        " --uniform-bucket-level-access --public-access-prevention --project=my-sentiment-project",
        "gcloud artifacts repositories create sentiment --repository-format=docker --location=europe-west1"
        " --project=my-sentiment-project",
        "gcloud builds submit infra/mlflow"
        " --tag=europe-west1-docker.pkg.dev/my-sentiment-project/sentiment/mlflow:3.17.2"
        " --project=my-sentiment-project",
        "gcloud builds submit --config=training/cloudbuild.yaml"
        f" --substitutions=_IMAGE={training_image},_GIT_COMMIT=unknown . --project=my-sentiment-project",
        "terraform -chdir=infra/terraform apply -input=false -auto-approve -var=project_id=my-sentiment-project"
        " -var=region=europe-west1 -var=name_prefix=my-sentiment-project"
        " -var=mlflow_image=europe-west1-docker.pkg.dev/my-sentiment-project/sentiment/mlflow:3.17.2"
        " -var=initial_model_uri=gs://my-sentiment-project-staged-models/yelp-sentiment/v1",
        f"gcloud storage rsync --recursive {data_dir} gs://my-sentiment-project-training-data/yelp-sentiment/yelp/"
        " --project=my-sentiment-project",
        f"gcloud storage rsync --recursive {ood_dir} gs://my-sentiment-project-training-data/yelp-sentiment/ood/"
        " --project=my-sentiment-project",
        f"eval_set --output build/eval-set.jsonl --data {data_dir} --hashes-output"
        " gs://my-sentiment-project-training-data/yelp-sentiment/holdout/eval-set.sha256",
        "bootstrap",
    ]
    commands = cloud.commands()
    assert commands.index("make bundles") < next(i for i, c in enumerate(commands) if " apply " in c)
    assert any(c.startswith("terraform -chdir=infra/terraform init") for c in commands)
    assert (cloud.root / "infra/terraform/backend.tf").exists()
    assert [c for c in commands if c.startswith("gsutil")] == []


def test_deploy_bootstrap_gets_terraform_outputs_secrets_and_an_identity_token(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)

    check, run = (c for c in cloud.calls() if c["tool"] == "bootstrap")
    assert check["args"] == ["--check"]
    assert run["args"] == []
    assert (
        check["env"]
        == run["env"]
        == {
            "MLFLOW_TRACKING_URI": "https://mlflow-abc.a.run.app",
            "MLFLOW_WEBHOOK_URL": "https://registry-webhook-abc.a.run.app/webhook",
            "MLFLOW_ADMIN_PASSWORD": "value-of-sentiment-mlflow-admin-password",
            "MLFLOW_WATCHER_PASSWORD": "value-of-sentiment-mlflow-watcher-password",
            "MLFLOW_TRAINER_PASSWORD": "value-of-sentiment-mlflow-trainer-password",
            "MLFLOW_WEBHOOK_SECRET": "value-of-sentiment-mlflow-webhook",
            "MLFLOW_IAM_TOKEN": "fake-identity-token",
            "GOOGLE_CLOUD_PROJECT": "my-sentiment-project",
            "REGION": "europe-west1",
        }
    )
    said = cloud.main("deploy", *ARGS, "--dry-run")[1]
    assert "value-of-" not in said  # secrets are read when the step runs, never printed


def test_deploy_prints_the_urls(cloud: Cloud) -> None:
    code, said = cloud.main("deploy", *ARGS)

    assert code == 0
    assert "site_url: http://203.0.113.7/" in said
    assert "predict_url: http://203.0.113.7/api/predict" in said
    assert "load_balancer_ip: 203.0.113.7" in said  # the domain's A record (README: DNS)
    assert "mlflow_url: https://mlflow-abc.a.run.app" in said


def test_deploy_second_run_changes_nothing(cloud: Cloud) -> None:
    assert cloud.main("deploy", *ARGS)[0] == 0
    cloud.reset_log()

    code, said = cloud.main("deploy", *ARGS)

    assert code == 0, said
    assert cloud.commands(), "the second run checked nothing"
    assert cloud.mutating() == []
    assert said.count("already done") == 13  # all but init and bundles, which are local and always run


@pytest.mark.parametrize(
    ("failing", "step", "ran_after"),
    [
        ("buckets create", "state-bucket", "artifacts repositories create"),
        ("builds submit infra/mlflow", "mlflow-image", " apply "),
        ("builds submit --config=training", "training-image", " apply "),
        ("rsync", "training-data", "bootstrap"),
        ("apply", "terraform-apply", "bootstrap"),
    ],
)
def test_deploy_failing_step_stops_with_its_name_and_resume(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, failing: str, step: str, ran_after: str
) -> None:
    monkeypatch.setenv("FAKE_FAIL", failing)

    code, said = cloud.main("deploy", *ARGS)

    assert code == 1
    assert f"{step} failed:" in said
    assert failing.split()[-1] in said.splitlines()[-2]  # the command that failed is quoted
    assert "make deploy PROJECT=my-sentiment-project REGION=europe-west1" in said
    assert not any(ran_after in c for c in cloud.commands())


def test_deploy_after_failure_resumes_at_the_failed_step(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "builds submit infra/mlflow")
    cloud.main("deploy", *ARGS)
    monkeypatch.delenv("FAKE_FAIL")
    cloud.reset_log()

    code, _ = cloud.main("deploy", *ARGS)

    assert code == 0
    assert cloud.mutating()[0].startswith("gcloud builds submit")


def test_deploy_missing_prerequisite_names_what_to_do(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "print-access-token")

    code, said = cloud.main("deploy", *ARGS)

    assert code == 1
    assert "credentials failed" in said
    assert "failing on purpose" in said  # the check's own error
    assert "gcloud auth application-default login" in said
    assert cloud.mutating() == []


@pytest.mark.parametrize("action", ["deploy", "destroy"])
def test_dry_run_prints_the_plan_and_runs_nothing(cloud: Cloud, action: str) -> None:
    code, said = cloud.main(action, *ARGS, "--dry-run")

    assert code == 0
    assert cloud.calls() == []
    assert "1. project" in said
    assert "terraform -chdir=infra/terraform" in said


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deploy", "--region", "europe-west1"], "PROJECT missing"),
        (["deploy", "--project", "my-sentiment-project"], "REGION missing"),
        (["deploy"], "PROJECT and REGION missing"),
        (["destroy", "--project", "", "--region", ""], "PROJECT and REGION missing"),
        (["deploy", "--project", "My_Project", "--region", "europe-west1"], "is not a project id"),
        (["deploy", "--project", "my-sentiment-project", "--region", "europe"], "is not a region"),
    ],
)
def test_main_missing_or_bad_settings_usage_error(cloud: Cloud, argv: list[str], message: str) -> None:
    code, said = cloud.main(*argv)

    assert code == 2
    assert message in said
    assert "make deploy PROJECT=" in said or "is not" in said
    assert cloud.calls() == []


def test_destroy_tears_down_in_order_and_keeps_the_state_bucket(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)
    cloud.reset_log()

    code, said = cloud.main("destroy", *ARGS, "--yes")

    assert code == 0, said
    mutating = cloud.mutating()
    assert [m.split(" -")[0] for m in mutating] == [
        "terraform",  # apply with deletion protection off
        "gcloud compute networks peerings delete servicenetworking-googleapis-com",
        "terraform",  # destroy
        "gcloud firestore databases delete",
        "gcloud artifacts repositories delete sentiment",
    ]
    assert "-var=deletion_protection=false" in mutating[0].split()
    assert " destroy " in mutating[2]
    assert "make bundles" in cloud.commands()  # terraform reads the bundles to plan the destroy
    assert (cloud.state / "storage" / "gs:__my-sentiment-project-tfstate").exists()


def test_destroy_resumed_after_a_failure_with_the_protected_resources_gone_applies_nothing(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud.main("deploy", *ARGS)
    # The first destroy deleted Cloud SQL, MLflow and Firestore, then failed on the subnet Cloud Run still holds.
    (cloud.state / "terraform" / "applied").write_text("")
    monkeypatch.setenv("FAKE_FAIL", "terraform -chdir=infra/terraform destroy")
    failed, said = cloud.main("destroy", *ARGS, "--yes")
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.setenv("FAKE_STATE_LIST", "google_compute_subnetwork.run")
    cloud.reset_log()

    code, _ = cloud.main("destroy", *ARGS, "--yes")

    assert failed == 1, said
    assert code == 0
    assert [m for m in cloud.mutating() if " apply " in m] == []  # nothing re-created
    assert any(" destroy " in m for m in cloud.mutating())


def test_destroy_then_deploy_creates_everything_again(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)
    cloud.main("destroy", *ARGS, "--yes", "--delete-state-bucket")
    assert not (cloud.state / "storage" / "gs:__my-sentiment-project-tfstate").exists()
    cloud.reset_log()

    code, _ = cloud.main("deploy", *ARGS)

    assert code == 0
    assert any("buckets create" in m for m in cloud.mutating())
    assert any(" apply " in m for m in cloud.mutating())


def test_destroy_second_run_changes_nothing(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)
    cloud.main("destroy", *ARGS, "--yes")
    cloud.reset_log()

    code, said = cloud.main("destroy", *ARGS, "--yes")

    assert code == 0, said
    assert cloud.mutating() == []


def test_destroy_unconfirmed_runs_nothing(cloud: Cloud) -> None:
    code, said = cloud.main("destroy", *ARGS)

    assert code == 1
    assert "not confirmed" in said
    assert cloud.calls() == []


def test_mlflow_version_is_the_image_locks_pin_and_the_tests_one() -> None:
    assert f"mlflow=={deploy.mlflow_version(REPO_ROOT)}\n" in (REPO_ROOT / "requirements/dev.txt").read_text()


@pytest.mark.parametrize(
    ("heading", "plan"),
    [("## Deploying: `make deploy`", deploy.deploy_plan), ("## Tearing down: `make destroy`", deploy.destroy_plan)],
)
def test_guide_lists_every_step_in_the_plans_order(heading: str, plan: Callable[..., list[deploy.Step]]) -> None:
    guide = (REPO_ROOT / "infra/terraform/README.md").read_text()
    section = guide.split(heading, 1)[1].split("\n## ", 1)[0]
    settings = deploy.Settings("my-sentiment-project", "europe-west1", delete_state_bucket=True)
    listed = re.findall(
        r"`([a-z-]+)`", "\n".join(line.split("|")[2] for line in section.splitlines() if re.match(r"\| [0-9]", line))
    )

    assert listed == [step.name for step in plan(settings, "3.17.2")]


def test_deploy_makes_the_operator_an_invoker_of_mlflow_and_the_watcher(cloud: Cloud) -> None:
    code, said = cloud.main("deploy", *ARGS, "--operator", "user:ops@example.com")

    apply = next(m for m in cloud.mutating() if " apply " in m)
    assert code == 0, said
    assert '-var=mlflow_invokers=["user:ops@example.com"]' in apply
    assert '-var=watcher_invokers=["user:ops@example.com"]' in apply


def test_deploy_refuses_an_operator_that_is_not_an_iam_member(cloud: Cloud) -> None:
    code, said = cloud.main("deploy", *ARGS, "--operator", "ops@example.com")

    assert code == 2
    assert "OPERATOR 'ops@example.com' is not an IAM member" in said
    assert cloud.calls() == []


def test_deploy_passes_the_alert_email_to_terraform_only_when_given(cloud: Cloud) -> None:
    code, said = cloud.main("deploy", *ARGS, "--alert-email", "ml-ops@example.com")
    apply = next(m for m in cloud.mutating() if " apply " in m)
    settings = deploy.Settings("my-sentiment-project", "europe-west1")

    assert code == 0, said
    assert "-var=alert_email=ml-ops@example.com" in apply
    assert "alert_email" not in deploy.terraform_vars(settings, "3.17.2")  # terraform.tfvars or the default decide


def test_deploy_refuses_an_alert_email_that_is_not_one_address(cloud: Cloud) -> None:
    code, said = cloud.main("deploy", *ARGS, "--alert-email", "ml-ops@example.com,dev@example.com")

    assert code == 2
    assert "ALERT_EMAIL 'ml-ops@example.com,dev@example.com' is not one email address" in said
    assert cloud.calls() == []


def test_make_passes_alert_email_to_both_commands() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()

    assert makefile.count('$(if $(ALERT_EMAIL),--alert-email "$(ALERT_EMAIL)")') == 2


def tag(cloud: Cloud) -> str:
    return deploy.training_image_tag(cloud.root)


def test_deploy_applies_the_training_image_by_the_digest_of_the_build(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)

    applies = [c for c in cloud.calls() if c["tool"] == "terraform" and c["args"][1] in ("plan", "apply")]
    assert applies
    assert {c["env"]["TF_VAR_training_image"] for c in applies} == {DIGEST}
    built = next(i for i, c in enumerate(cloud.commands()) if "--config=training/cloudbuild.yaml" in c)
    assert built < next(i for i, c in enumerate(cloud.commands()) if " apply " in c)


def test_training_image_tag_follows_the_code_it_is_built_from(cloud: Cloud) -> None:
    before = tag(cloud)
    (cloud.root / "training" / "job.py").write_text("# changed\n")
    after = tag(cloud)

    assert before != after
    assert after == tag(cloud)
    assert re.fullmatch(r"src-[0-9a-f]{20}", after)


def test_deploy_builds_a_new_training_image_only_when_its_inputs_change(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)
    (cloud.root / "training" / "job.py").write_text("# a change of the training code\n")
    cloud.reset_log()

    code, said = cloud.main("deploy", *ARGS)

    assert code == 0, said
    # The fake's plan then says "no changes"; the real one sees the new digest and applies it.
    assert [c.split()[:4] for c in cloud.mutating()] == [
        ["gcloud", "builds", "submit", "--config=training/cloudbuild.yaml"]
    ]
    assert f"training:{tag(cloud)}," in cloud.mutating()[0]


def test_destroy_passes_the_deployed_training_image_back(cloud: Cloud) -> None:
    cloud.main("deploy", *ARGS)
    cloud.reset_log()

    code, said = cloud.main("destroy", *ARGS, "--yes")

    assert code == 0, said
    tf = [c for c in cloud.calls() if c["tool"] == "terraform" and c["args"][1] in ("apply", "destroy")]
    assert tf
    assert {c["env"]["TF_VAR_training_image"] for c in tf} == {DIGEST}
