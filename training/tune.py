"""Command line: `python -m training.tune --help`. Hyper-parameter search with Optuna over the pure steps that
training.train runs (data, preprocess, fit); every trial a nested MLflow run under one parent run.

Objective: the validation accuracy (at the default threshold) of the epoch whose weights fit keeps, the one with
the best validation ROC AUC: `best_val_accuracy`, the very figure the deploy gate reads from a training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from sentiment_core.contract import MODEL_NAME, VALIDATION_ACCURACY_METRIC
from training import data, export, preprocess, train
from training.fit import HyperParams, fit
from training.train import DEFAULTS, THRESHOLD, D, log

# The search space: the HyperParams fields that change the model. Not searched: the seed (fixed by --seed, so
# a trial's split and weights are reproducible) and the epochs, because an epoch does not depend on how many
# follow it (the learning rate decays per epoch): each trial trains up to --max-epochs, the pruner stops it
# early, and the epoch fit keeps becomes the `--epochs` of the reproducing command.
SPACE: dict[str, BaseDistribution] = {
    "embedding_dim": CategoricalDistribution((16, 32, 64, 128)),
    "batch_size": CategoricalDistribution((16, 32, 64, 128, 256)),
    "learning_rate": FloatDistribution(5e-4, 5e-2, log=True),
    "lr_decay": FloatDistribution(0.3, 1.0),
    "min_count": IntDistribution(1, 5),
    "max_features": CategoricalDistribution((50_000, 100_000, 250_000, 500_000)),
}
OBJECTIVE = VALIDATION_ACCURACY_METRIC
# TPE samples at random until it has this many trials to model (Optuna's default is 10, too many for 20 trials).
STARTUP_TRIALS = 8
# Median rule: prune a trial whose best value so far is below the median of the completed trials at the same
# epoch, once 4 trials have completed, and never on the first epoch alone (a low learning rate starts slow).
PRUNE_AFTER_TRIALS = 4
PRUNE_FROM_EPOCH = 2
TRIAL_TAG = "optuna_trial"
STATE_TAG = "optuna_state"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.tune",
        description="Search the sentiment model's hyper-parameters with Optuna (TPE sampler, median pruner on "
        f"each epoch's {OBJECTIVE}); every trial a nested MLflow run. Prints the training.train command that "
        "reproduces the best trial.",
    )
    train.add_data_arguments(parser)

    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=train.at_least(1), default=20, metavar="N", help="number of trials" + D)
    group.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds after which no new trial starts (the running one finishes; default: no limit)",
    )
    group.add_argument(
        "--max-epochs",
        type=train.at_least(1),
        default=6,
        metavar="N",
        help="epochs a trial may train; the pruner stops unpromising trials earlier" + D,
    )
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the sampler, split and training" + D)

    train.add_tracking_arguments(parser)
    group = parser.add_argument_group("registration and output")
    group.add_argument(
        "--register",
        action="store_true",
        help=f"train the best trial's parameters as training.train does and register it as a version of {MODEL_NAME}",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout must be a positive number of seconds")
    return args


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The training and validation texts tokenised and encoded once, for every trial.

    They are encoded with every training feature: a trial's vocabulary (its min_count and max_features) is a
    prefix of that one, so `select` only drops ids instead of tokenising and counting again.
    """

    counts: preprocess.FeatureCounts
    train_ids: list[list[int]]
    train_labels: list[int]
    val_ids: list[list[int]]
    val_labels: list[int]

    @classmethod
    def of(cls, dataset: data.Dataset, split: data.Split) -> Prepared:
        texts = data.take(dataset.texts, split.train + split.validation)
        tokens = preprocess.tokenize(texts)
        train_tokens, val_tokens = tokens[: len(split.train)], tokens[len(split.train) :]
        counts = preprocess.FeatureCounts.count(train_tokens)
        everything = counts.vocabulary(min_count=1, max_size=len(counts.features))
        labels = np.asarray(dataset.labels)
        return cls(
            counts=counts,
            train_ids=everything.encode(train_tokens),
            train_labels=labels[split.train].tolist(),
            val_ids=everything.encode(val_tokens),
            val_labels=labels[split.validation].tolist(),
        )

    def select(self, params: HyperParams) -> tuple[int, list[list[int]], list[list[int]]]:
        """The vocabulary size and the training and validation ids as featurize would give them for params."""
        size = len(self.counts.vocabulary(min_count=params.min_count, max_size=params.max_features))
        return size, preprocess.restrict(self.train_ids, size), preprocess.restrict(self.val_ids, size)


def suggest(trial: optuna.Trial, *, epochs: int, seed: int) -> HyperParams:
    """A trial's hyper-parameters: SPACE's values, and the epoch budget and seed, which are not searched."""
    values = {}
    for name, distribution in SPACE.items():
        match distribution:
            case CategoricalDistribution():
                values[name] = trial.suggest_categorical(name, distribution.choices)
            case IntDistribution():
                values[name] = trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log)
            case FloatDistribution():
                values[name] = trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
            case _:
                raise TypeError(f"{name}: no suggest_* call for {type(distribution).__name__}")
    return HyperParams(**values, epochs=epochs, seed=seed)


def objective_value(history: list[dict[str, float]]) -> float:
    """The objective after these epochs: the validation accuracy of the epoch fit would keep."""
    return train.kept_epoch_metrics(history)[OBJECTIVE]


def search(
    prepared: Prepared,
    *,
    trials: int,
    timeout: float | None,
    max_epochs: int,
    seed: int,
    pruner: optuna.pruners.BasePruner | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run the study under the active MLflow run, each trial a nested run; the first trial is training.train's
    defaults, so the search starts from the model as it is."""
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS),
        pruner=pruner
        or optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH),
    )
    study.enqueue_trial({name: getattr(DEFAULTS, name) for name in SPACE})
    study.optimize(
        lambda trial: _run_trial(trial, prepared, max_epochs=max_epochs, seed=seed),
        n_trials=trials,
        timeout=timeout,
        show_progress_bar=progress,
    )
    return study


def _run_trial(trial: optuna.Trial, prepared: Prepared, *, max_epochs: int, seed: int) -> float:
    import mlflow

    params = suggest(trial, epochs=max_epochs, seed=seed)
    size, train_ids, val_ids = prepared.select(params)
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        train.log_epoch(mlflow, epoch, record)
        history.append(record)
        trial.report(objective_value(history), epoch)
        # After the last epoch there is nothing left to save: the trial completes and its value counts.
        if epoch < params.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    pruned = None
    with mlflow.start_run(run_name=f"trial {trial.number}", nested=True) as child:
        trial.set_user_attr("mlflow_run_id", child.info.run_id)
        mlflow.set_tag(TRIAL_TAG, str(trial.number))
        mlflow.log_params({**dataclasses.asdict(params), "vocabulary_size": size})
        try:
            fit(
                train_ids,
                prepared.train_labels,
                val_ids,
                prepared.val_labels,
                vocab_size=size,
                params=params,
                threshold=THRESHOLD,
                on_epoch=on_epoch,
                progress=False,
            )
        except optuna.TrialPruned as exc:
            pruned = exc
        kept = train.kept_epoch_metrics(history)
        mlflow.log_metrics(kept)
        trial.set_user_attr("kept_epoch_metrics", kept)
        # A pruned trial is a deliberate early stop, not a failure: its run ends FINISHED, tagged.
        state = TrialState.COMPLETE if pruned is None else TrialState.PRUNED
        mlflow.set_tags({STATE_TAG: state.name, "pruned": str(pruned is not None).lower()})
    if pruned is not None:
        raise pruned
    return kept[OBJECTIVE]


def best_params(study: optuna.Study, seed: int) -> HyperParams:
    """The best trial's hyper-parameters, its epochs the epoch fit kept (training that many gives its weights)."""
    best = study.best_trial
    return HyperParams(**best.params, epochs=int(best.user_attrs["kept_epoch_metrics"]["best_epoch"]), seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (data.DataError, export.ExportError) as exc:  # as training.train reports them
        log(f"error: {exc}")
        return 2


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    dataset, split = train.load_data(args)
    if train.connect(args) is None:
        return 3
    import mlflow

    log("tokenising once for every trial ...")
    prepared = Prepared.of(dataset, split)
    log(f"features: {len(prepared.counts.features)} unigrams and bigrams seen in training")
    with mlflow.start_run(run_name="optuna search") as parent:
        _log_settings(args, dataset, split)
        study = search(
            prepared,
            trials=args.trials,
            timeout=args.timeout,
            max_epochs=args.max_epochs,
            seed=args.seed,
            progress=not args.quiet,
        )
        mlflow.set_tags({"sampler": type(study.sampler).__name__, "pruner": type(study.pruner).__name__})
        counts = {state.name.lower(): len(study.get_trials(states=(state,))) for state in TrialState}
        counts = {state: n for state, n in counts.items() if n}
        mlflow.log_metrics({f"trials_{state}": n for state, n in counts.items()})
        # The first trial cannot be pruned (the pruner waits for completed trials) nor cut by the timeout.
        best, params = study.best_trial, best_params(study, args.seed)
        train_argv = train.command_line(params, args)
        command = shlex.join(["python", "-m", "training.train", *train_argv])
        _log_best(best, params, command, study)
        registered = _register(train_argv, best.number, args.quiet, dataset, split) if args.register else {}

    log(f"best trial {best.number}: {OBJECTIVE} {best.value:.4f}; reproduce with:")
    print(command)
    summary = {
        "parent_run_id": parent.info.run_id,
        "best_trial": best.number,
        "best_run_id": best.user_attrs["mlflow_run_id"],
        OBJECTIVE: round(best.value, 4),
        "best_params": dataclasses.asdict(params),
        "trials": counts,
        "command": command,
        "model_version": registered.get("model_version"),
        "registered_run_id": registered.get("run_id"),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary))
    return 0


def _log_settings(args: argparse.Namespace, dataset: data.Dataset, split: data.Split) -> None:
    """On the parent run: what was searched, how, and on which data."""
    import mlflow

    from training import tracking

    mlflow.set_tags({"search": "optuna", "seed": str(args.seed)})
    mlflow.log_params(
        {
            "objective": OBJECTIVE,
            "trials": args.trials,
            "timeout_s": args.timeout,
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "label_rule": dataset.label_rule.describe(),
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            "limit": args.limit,
            "training_data_sha256": dataset.sha256,
        }
    )
    mlflow.log_dict({name: json.loads(distribution_to_json(d)) for name, d in SPACE.items()}, "search/space.json")
    tracking.log_lineage(dataset, split)


def _register(
    train_argv: list[str], trial: int, quiet: bool, dataset: data.Dataset, split: data.Split
) -> dict[str, object]:
    """Train the best parameters as training.train does, as a child of the parent run, and register the model."""
    import mlflow

    log(f"training the best trial ({trial}) as training.train does, to register it ...")
    args = train.parse_args([*train_argv, "--register", "--run-name", f"trial {trial}, registered"])
    args.quiet = quiet
    summary = train.train_and_log(args, dataset, split, nested=True)
    mlflow.set_tags(
        {"registered_model_version": str(summary["model_version"]), "registered_run_id": str(summary["run_id"])}
    )
    return summary


def _log_best(best: optuna.trial.FrozenTrial, params: HyperParams, command: str, study: optuna.Study) -> None:
    """On the parent run: best_* params and metrics, the reproducing command (tag and artifact), every trial."""
    import mlflow

    mlflow.log_params({"best_trial": best.number, **{f"best_{k}": v for k, v in dataclasses.asdict(params).items()}})
    mlflow.log_metrics(best.user_attrs["kept_epoch_metrics"])
    mlflow.set_tags({"best_trial_run_id": best.user_attrs["mlflow_run_id"], "reproduce_command": command})
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "epochs_trained": max(t.intermediate_values, default=0),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in study.trials
    ]
    result = {
        "objective": OBJECTIVE,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": dataclasses.asdict(params),
        "command": command,
        "trials": trials,
    }
    mlflow.log_dict(result, "search/result.json")


if __name__ == "__main__":
    sys.exit(main())
