#!/usr/bin/env python3
"""A local stand-in for gcloud, terraform, gsutil and make (tests/infra/test_deploy.py), installed under each name.

It logs its name and arguments (one JSON line per call to $FAKE_LOG) and keeps what it "created" as files in
$FAKE_STATE, so a second deployment finds everything done. A call whose command line contains $FAKE_FAIL exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_STATE"])
OUTPUTS = {
    "site_url": "http://203.0.113.7/",
    "predict_url": "http://203.0.113.7/api/predict",
    "feedback_url": "http://203.0.113.7/api/feedback",
    "load_balancer_ip": "203.0.113.7",
    "mlflow_url": "https://mlflow-abc.a.run.app",
    "registry_watcher_url": "https://registry-watcher-abc.a.run.app",
    "registry_webhook_url": "https://registry-webhook-abc.a.run.app/webhook",
    "data_bucket": "gs://my-sentiment-project-training-data/yelp-sentiment/",
    "training_job": "train",
    "training_image": "europe-west1-docker.pkg.dev/my-sentiment-project/sentiment/training@sha256:" + "ab" * 32,
}


def has(kind: str, name: str) -> bool:
    return (STATE / kind / name.replace("/", "_")).exists()


def put(kind: str, name: str) -> None:
    (STATE / kind).mkdir(parents=True, exist_ok=True)
    (STATE / kind / name.replace("/", "_")).touch()


def drop(kind: str, name: str) -> None:
    (STATE / kind / name.replace("/", "_")).unlink(missing_ok=True)


def answer(tool: str, args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    if tool == "gcloud":
        match words:
            case ["projects", "describe", _] | ["auth", "application-default", "print-access-token"]:
                return 0
            case ["auth", "print-identity-token"]:
                print("fake-identity-token")
                return 0
            case ["secrets", "versions", "access", "latest"]:
                secret = next(a.split("=", 1)[1] for a in args if a.startswith("--secret="))
                if not has("terraform", "applied"):
                    print(f"NOT_FOUND: secret {secret}", file=sys.stderr)
                    return 1
                print(f"value-of-{secret}")
                return 0
            case ["services", "list"]:
                print("\n".join(p.name for p in sorted((STATE / "api").glob("*"))) if (STATE / "api").is_dir() else "")
                return 0
            case ["services", "enable", *apis]:
                for api in apis:
                    put("api", api)
                return 0
            case ["storage", "buckets", "describe", name] | ["artifacts", "repositories", "describe", name]:
                return 0 if has(words[0], name) else 1
            case ["storage", "buckets", "create", name] | ["artifacts", "repositories", "create", name]:
                put(words[0], name)
                return 0
            case ["storage", "rm", name] | ["artifacts", "repositories", "delete", name]:
                drop(words[0], name)
                return 0
            case ["artifacts", "docker", "images", "describe", image]:
                if not has("image", image):
                    return 1
                if "--format=value(image_summary.fully_qualified_digest)" in args:
                    print(image.rsplit(":", 1)[0] + "@sha256:" + "ab" * 32)
                return 0
            case ["builds", "submit", _]:
                tag = [a.split("=", 1)[1] for a in args if a.startswith("--tag=")]
                # --config builds name their image in the substitution _IMAGE (training/cloudbuild.yaml).
                substitutions = [a.split("=", 1)[1] for a in args if a.startswith("--substitutions=")]
                image = tag[0] if tag else dict(s.split("=", 1) for s in substitutions[0].split(","))["_IMAGE"]
                put("image", image)
                return 0
            case ["storage", "rsync", _, target]:
                put("object", target)
                return 0
            case ["storage", "ls", target]:
                return 0 if has("object", target) else 1
            case ["compute", "networks", "peerings", "list"]:
                print("servicenetworking-googleapis-com" if has("peering", "sentiment") else "")
                return 0
            case ["compute", "networks", "peerings", "delete", _]:
                drop("peering", "sentiment")
                return 0
            case ["firestore", "databases", "describe"]:
                return 0 if has("terraform", "firestore") else 1
            case ["firestore", "databases", "delete"]:
                drop("terraform", "firestore")
                return 0
    if tool == "terraform":
        match words:
            case ["init"]:
                return 0
            case ["plan"]:
                return 0 if has("terraform", "applied") else 2
            case ["apply"]:
                put("terraform", "applied")
                put("peering", "sentiment")  # Service Networking peers the VPC for Cloud SQL
                put("terraform", "firestore")  # abandoned by destroy, as firestore.tf's deletion_policy says
                return 0
            case ["destroy"]:
                drop("terraform", "applied")
                return 0
            case ["state", "list"]:
                applied = ["google_project_service.main", "google_sql_database_instance.mlflow"]
                # FAKE_STATE_LIST: what a destroy that failed half-way left in the state.
                left = (
                    os.environ.get("FAKE_STATE_LIST", "").split(",") if os.environ.get("FAKE_STATE_LIST") else applied
                )
                print("\n".join(left) if has("terraform", "applied") else "")
                return 0
            case ["output"]:
                print(json.dumps({k: {"value": v} for k, v in OUTPUTS.items()} if has("terraform", "applied") else {}))
                return 0
    if tool == "make" and words == ["bundles"]:
        return 0
    print(f"fake {tool}: unexpected call {args}", file=sys.stderr)
    return 3


def main() -> int:
    tool = Path(sys.argv[0]).name
    args = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as log:
        env = {name: os.environ.get(name) for name in ("MLFLOW_URL", "TF_VAR_training_image")}
        log.write(json.dumps({"tool": tool, "args": args, "env": env}) + "\n")
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join([tool, *args]):
        print(f"fake {tool}: failing on purpose", file=sys.stderr)
        return 1
    return answer(tool, [a for a in args if not a.startswith("-chdir=")])


if __name__ == "__main__":
    sys.exit(main())
