"""The training container's entry point: `python -m training.job [-- extra training.train arguments]`.

One training run of the data bucket, as the retrain check starts it (a Cloud Run job in the cloud, a subprocess
locally, `make demo` too). It lists the training data under DATA_URI (sentiment_core.training_data), pins every
object by its generation, fingerprints data and settings, and runs `training.train` in this process with:

    --data gs://B/NAME#GENERATION ...        every training data object, feedback/ included
    --ood-dir DATA_URI/ood/                  when that folder holds .tsv files (scored, never trained on)
    --exclude-texts DATA_URI/holdout/        when that folder holds files (the deploy gate's evaluation texts)
    --quiet RETRAIN_ARGS --register --challenge --auto-promote AUTO_PROMOTE
    --tag training_fingerprint=... --tag trigger=retrain_check|manual [--tag retrain_execution=...]
    [--tag training_image=...] EXTRA

Environment: DATA_URI (required), RETRAIN_ARGS, TRAINING_IMAGE, TRAINING_BUILD, GIT_COMMIT, RETRAIN_EXECUTION,
AUTO_PROMOTE (never | canary), MLFLOW_TRACKING_URI (and MLflow's own credentials variables; MLFLOW_IAM_AUDIENCE
behind Cloud Run IAM, training/mlflow_auth.py), STORAGE_EMULATOR_HOST locally.
Extra arguments say where results go (OUTPUT_OPTIONS: --promote, --output-dir, --checkpoint, --run-name,
--quiet) and are not part of the fingerprint; any other is refused (training options go in RETRAIN_ARGS).
Progress goes to stderr; the last line of stdout is the run's summary as JSON; the exit status is 0 only when
the run finished (the retrain check records failures by it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sentiment_core import config
from sentiment_core.training_data import (
    FINGERPRINT_TAG,
    HOLDOUT_FOLDER,
    OOD_FOLDER,
    DataLocation,
    DataLocationError,
    DataObject,
    TrainingSettings,
    fingerprint,
    list_training_data,
)
from training.challenger import AutoPromote

EXIT_CONFIG = 2  # a setting is missing or malformed, or there is nothing to train on
EXIT_FAILED = 1  # the run itself failed


class JobError(RuntimeError):
    """The job cannot start: a setting, or the data bucket."""


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """The job's environment, parsed once."""

    location: DataLocation
    training: TrainingSettings
    auto_promote: AutoPromote
    retrain_execution: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JobSettings:
        try:
            location = DataLocation.parse(config.required("DATA_URI", env))
            training = TrainingSettings.from_env(env)
            auto_promote = AutoPromote.parse(config.optional("AUTO_PROMOTE", AutoPromote.NEVER.value, env))
        except (config.ConfigError, DataLocationError, ValueError) as exc:
            raise JobError(str(exc)) from exc
        return cls(location, training, auto_promote, config.optional("RETRAIN_EXECUTION", "", env))

    @property
    def trigger(self) -> str:
        """retrain_check when the check started the run (it names its execution), else manual."""
        return "retrain_check" if self.retrain_execution else "manual"


@dataclasses.dataclass(frozen=True)
class Listing:
    """What the job found under the data location."""

    objects: list[DataObject]
    has_ood: bool  # .tsv files directly in ood/
    has_holdout: bool  # any file in holdout/


def list_data(client: Any, location: DataLocation) -> Listing:
    """The training data objects and whether the ood/ and holdout/ folders have something for training."""
    objects = list_training_data(client, location)
    ood = location.folder(OOD_FOLDER)
    ood_names = [b.name[len(ood) :] for b in client.list_blobs(location.bucket, prefix=ood)]
    has_ood = any("/" not in name and name.endswith(".tsv") for name in ood_names)
    holdout = location.folder(HOLDOUT_FOLDER)
    has_holdout = any(not b.name.endswith("/") for b in client.list_blobs(location.bucket, prefix=holdout))
    return Listing(objects, has_ood, has_holdout)


def training_argv(settings: JobSettings, listing: Listing, data_fingerprint: str, extra: Sequence[str]) -> list[str]:
    """The arguments of training.train for one job run (the module docstring's order: later ones win)."""
    location = settings.location
    argv: list[str] = []
    for obj in listing.objects:
        argv += ["--data", obj.pinned_uri(location.bucket)]
    if listing.has_ood:
        argv += ["--ood-dir", f"{location.uri}{OOD_FOLDER}"]
    if listing.has_holdout:
        argv += ["--exclude-texts", f"{location.uri}{HOLDOUT_FOLDER}"]
    # Progress bars are for terminals: in a job's log each redraw would be a line.
    argv += ["--quiet", *settings.training.args]
    argv += ["--register", "--challenge", "--auto-promote", settings.auto_promote.value]
    tags = {FINGERPRINT_TAG: data_fingerprint, "trigger": settings.trigger}
    if settings.retrain_execution:
        tags["retrain_execution"] = settings.retrain_execution
    if settings.training.image:
        tags["training_image"] = settings.training.image
    for key, value in tags.items():
        argv += ["--tag", f"{key}={value}"]
    return [*argv, *extra]


# Extra arguments that say where the results go, not what is learned: everything else that shapes the model goes
# in RETRAIN_ARGS, which is part of the fingerprint, so that a run's training_fingerprint says what it learned from.
OUTPUT_OPTIONS = {"--promote": 0, "--output-dir": 1, "--checkpoint": 1, "--run-name": 1, "--quiet": 0}


def check_extra(extra: Sequence[str]) -> None:
    """JobError unless every extra argument is one of OUTPUT_OPTIONS (with its value)."""
    i = 0
    while i < len(extra):
        option = extra[i].split("=", 1)[0]
        if option not in OUTPUT_OPTIONS:
            raise JobError(
                f"extra argument {extra[i]!r} would change what the model learns: put training options in RETRAIN_ARGS "
                f"(part of the fingerprint); extra arguments may only be {', '.join(OUTPUT_OPTIONS)}"
            )
        i += 1 + (OUTPUT_OPTIONS[option] if "=" not in extra[i] else 0)
    if i > len(extra):
        raise JobError(f"{extra[-1]} needs a value")


def log(message: str) -> None:
    print(f"job: {message}", file=sys.stderr, flush=True)


def run(env: Mapping[str, str], extra: Sequence[str]) -> int:
    """List, fingerprint and train; the exit status."""
    from training import data, train

    settings = JobSettings.from_env(env)
    check_extra(extra)
    try:
        listing = list_data(data.gcs_client(), settings.location)
    except Exception as exc:  # the storage client raises many types; all mean "cannot list"
        raise JobError(f"cannot list {settings.location.uri}: {exc}") from exc
    if not listing.objects:
        raise JobError(f"{settings.location.uri} holds no training data (*{', *'.join(data.DATA_SUFFIXES)})")
    data_fingerprint = fingerprint(listing.objects, settings.training)
    log(
        f"{len(listing.objects)} data objects under {settings.location.uri}, fingerprint {data_fingerprint[:12]}..., "
        f"ood sets: {'yes' if listing.has_ood else 'no'}, held-out hashes: {'yes' if listing.has_holdout else 'no'}, "
        f"trigger {settings.trigger}, AUTO_PROMOTE={settings.auto_promote.value}"
    )
    argv = training_argv(settings, listing, data_fingerprint, extra)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            status = train.main(argv)
    except SystemExit as exc:  # argparse: a bad RETRAIN_ARGS or extra argument
        status = exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    lines = captured.getvalue().strip().splitlines()
    for line in lines[:-1]:  # anything else a library printed: still visible, not the summary
        print(line, file=sys.stderr)
    if status != 0:
        log(f"training failed (exit status {status})")
        return status or EXIT_FAILED
    summary = json.loads(lines[-1])
    print(json.dumps({**summary, FINGERPRINT_TAG: data_fingerprint, "data_objects": len(listing.objects)}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The job on this process's environment (training.train reads it too: the fingerprint it checks)."""
    import os

    extra = list(sys.argv[1:] if argv is None else argv)
    if extra[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        return run(os.environ, extra)
    except JobError as exc:
        log(f"error: {exc}")
        return EXIT_CONFIG
    except Exception as exc:  # whatever failed, the check must see a failed run, with its reason in the log
        log(f"error: {type(exc).__name__}: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
