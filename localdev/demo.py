"""`python -m localdev.demo [--detach]`: the whole loop, once, on this machine.

Starts the local stack, trains on the data bucket (the default data, staged there at `up`) with the training
job's entry point as the retrain check runs it, registers and promotes the model in MLflow, waits until
`predict` serves that version (the registry watcher's webhook, event and redeploy do the rest), sends a sample
prediction and its feedback, and prints where everything is. Stays in the foreground until Ctrl-C (which stops
the stack) unless --detach (or DETACH=1) is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from localdev import stack

SAMPLE = "The pasta was wonderful and the staff were so friendly."


def http_json(url: str, body: Any = None, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until_serving(urls: dict[str, str], version: str, timeout_s: float = 180) -> float:
    """Seconds until predict's /healthz reports `version`; a tick is sent at once in case a webhook was lost."""
    started = time.monotonic()
    try:
        http_json(urls["registry_watcher"], {}, timeout=60)
    except (urllib.error.URLError, OSError) as exc:
        print(f"  (tick failed: {exc}; the scheduler will tick again)", flush=True)
    while time.monotonic() - started < timeout_s:
        try:
            if http_json(f"{urls['predict']}/healthz", timeout=5).get("model_version") == version:
                return time.monotonic() - started
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.5)
    status = http_json(f"{urls['registry_watcher']}/status")
    raise SystemExit(
        f"predict does not serve version {version} after {timeout_s:.0f} s; the watcher says:\n"
        + json.dumps({k: status[k] for k in ("desired", "serving", "refused")}, indent=2)
        + f"\nlogs: {stack.LOGS}"
    )


def job_environment(urls: dict[str, str]) -> dict[str, str]:
    """What the stack's retrain check gives the training job: the data bucket, MLflow, the emulator."""
    return {
        "DATA_URI": urls["data_bucket"],
        "STORAGE_EMULATOR_HOST": urls["storage_emulator"],
        "GOOGLE_CLOUD_PROJECT": stack.PROJECT,
        "MLFLOW_TRACKING_URI": urls["mlflow"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--detach", action="store_true", help="leave the stack running and return")
    parser.add_argument(
        "--train-args",
        default=None,
        help="extra arguments for training.train (e.g. '--limit 20000'): the stack's RETRAIN_ARGS, which the retrain "
        "check trains with too (default: $RETRAIN_ARGS, else none)",
    )
    args = parser.parse_args(argv)
    detach = args.detach or os.environ.get("DETACH", "") not in ("", "0")
    if args.train_args is not None:
        os.environ["RETRAIN_ARGS"] = args.train_args  # the stack's check and this run: one setting

    print("1/4 starting the local stack ...", flush=True)
    try:
        urls = stack.up()
    except (stack.StackError, stack.services.ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # stopped already by up(); say it plainly
        print(f"error: the stack could not start: {exc!r}; logs in {stack.LOGS}", file=sys.stderr)
        return 1

    print(
        f"2/4 training on the data bucket {urls['data_bucket']}, registering and promoting (about 90 s) ...", flush=True
    )
    models = stack.LOCAL_DIR / "models"
    # The training job's entry point on the data bucket, as the retrain check (and the cloud's job) runs it: the
    # run carries the data's fingerprint, so the check does not train on the same data again.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.job",
            "--",
            "--promote",
            "--output-dir",
            str(models / "latest"),
            "--checkpoint",
            str(models / "latest.pt"),
        ],
        cwd=stack.REPO_ROOT,
        env={**os.environ, **job_environment(urls)},
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"error: training failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    version = str(summary["model_version"])

    print(f"3/4 waiting until predict serves version {version} ...", flush=True)
    wait_until_serving(urls, version)

    print("4/4 a sample prediction and its feedback ...", flush=True)
    prediction = http_json(urls["predict"], {"text": SAMPLE})
    http_json(
        urls["feedback"],
        {
            "prediction_id": prediction["id"],
            "is_positive_user_answered": True,
            "feedback_token": prediction["feedback_token"],
        },
    )
    statistics = http_json(f"{urls['feedback']}/statistics")["statistics"]

    answer = "positive" if prediction["is_positive"]["model_answered"] else "negative"
    print(f"""
  The loop works: version {version} was promoted and predict serves it.

  Web page        {urls["frontend"]}
  MLflow UI       {urls["mlflow"]}/#/models/yelp-sentiment
  predict         {urls["predict"]}   (serving version {version}, run {summary["run_id"]})
  feedback        {urls["feedback"]}/statistics
  watcher status  {urls["registry_watcher"]}/status
  training data   {urls["data_bucket"]}   (upload a .jsonl of reviews there: the retrain check trains a
                  challenger within two minutes; `make retrain` checks at once; docs/retraining.md)

  Sample: "{SAMPLE}" -> {answer} ({prediction["probability"]:.3f}); feedback counted,
  {statistics["feedback"]} of {statistics["predictions"]} predictions have an answer.

  Promote another version: train again (make demo, or .venv/bin/python -m training.train --tracking-uri
  {urls["mlflow"]} --register), then in the MLflow UI open yelp-sentiment, pick the version and set its alias
  to "production". predict gives it half the traffic within seconds and all of it after 30 s, unless the
  live evidence says it is worse (it is then rolled back on its own; watcher status shows why).
  Logs: {stack.LOGS}    Stop: make down""")
    if detach:
        return 0
    print("\n  Ctrl-C stops the stack.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the stack like Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    print("\nstopping the stack ...", flush=True)
    stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
