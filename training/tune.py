"""Command line: `python -m training.tune --help`. Hyper-parameter search with Optuna over the pure steps that
training.train runs (data, preprocess, fit); every trial a nested MLflow run under one parent run.

Objective (`--objective`), measured on the epoch whose weights fit keeps (the one with the best validation ROC AUC):
- `mixed` (default): the mean of the validation accuracy and the accuracy on each out-of-domain dev set of
  --ood-dir, equal weights: a model must hold up on reviews it was not trained on, not only on its own split;
- `validation`: `best_val_accuracy` alone, the very figure the deploy gate reads from a training run.
The preprocessing (--split-apostrophes, --contractions, --tense-copies) is fixed for a search: the texts are
tokenised once.
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
from training import baseline, data, export, preprocess, train
from training.fit import HyperParams, fit
from training.train import DEFAULTS, THRESHOLD, D, log

# The search space: the HyperParams fields that change the model. Not searched: the seed (fixed by --seed, so
# a trial's split and weights are reproducible) and the epochs, because an epoch does not depend on how many
# follow it (the learning rate decays per epoch): each trial trains up to --max-epochs, the pruner stops it
# early, and the epoch fit keeps becomes the `--epochs` of the reproducing command.
SPACE: dict[str, BaseDistribution] = {
    "embedding_dim": CategoricalDistribution((16, 32, 64)),
    "batch_size": CategoricalDistribution((32, 64, 128)),
    "learning_rate": FloatDistribution(1e-3, 1e-2, log=True),
    "lr_decay": FloatDistribution(0.4, 1.0),
    "min_count": IntDistribution(1, 3),
    "max_features": CategoricalDistribution((250_000, 500_000)),
    # The out-of-domain levers (docs/model-card.md), in the ranges where the one-at-a-time runs did not lose.
    "weight_decay": FloatDistribution(0.0, 0.05),
    "label_smoothing": FloatDistribution(0.0, 0.05),
    "feature_dropout": FloatDistribution(0.0, 0.1),
    "review_weight": FloatDistribution(0.5, 2.0, log=True),
    "tense_copy_weight": FloatDistribution(0.25, 1.0),
    "balance_classes": CategoricalDistribution((False, True)),
    "idf_weighting": CategoricalDistribution((False, True)),
}
OBJECTIVES = ("mixed", "validation")
OBJECTIVE = "tune_objective"  # the MLflow metric of each trial's (and the parent's best) objective value
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
        "each epoch's objective); every trial a nested MLflow run. Prints the training.train command that "
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
    group.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="mixed",
        help="mixed: mean of the validation and each out-of-domain set's accuracy; validation: "
        f"{VALIDATION_ACCURACY_METRIC} alone" + D,
    )
    group.add_argument(
        "--split-apostrophes",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.split_apostrophes,
        help="the tokenizer of every trial, as training.train's option" + D,
    )
    group.add_argument(
        "--ensemble",
        type=train.at_least(1),
        default=DEFAULTS.ensemble,
        help="models averaged in every trial, as training.train's option (not searched: it multiplies the time)" + D,
    )
    group.add_argument(
        "--feedback-weight",
        type=float,
        default=DEFAULTS.feedback_weight,
        help="loss weight of a feedback example, as training.train's option (not searched: users' answers are "
        "not the data the search is judged on)" + D,
    )
    group.add_argument(
        "--baseline-floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a trial is feasible only if at least as accurate as the TF-IDF baseline (training.baseline, same "
        "split) on validation and, with the mixed objective, on every out-of-domain set; the best trial is the "
        "best feasible one, or the best of all (said so) when none is" + D,
    )

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
    if args.objective == "mixed" and args.ood_dir is None and not data.DEFAULT_OOD_DIR.is_dir():
        parser.error(f"--objective mixed needs --ood-dir ({data.DEFAULT_OOD_DIR} does not exist)")
    return args


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The training, validation and out-of-domain texts tokenised and encoded once, for every trial.

    They are encoded with every training feature: a trial's vocabulary (its min_count and max_features) is a
    prefix of that one, so `select` only drops ids instead of tokenising and counting again.
    """

    counts: preprocess.FeatureCounts
    train_ids: list[list[int]]
    train_labels: list[int]
    train_is_review: list[bool]
    train_is_tense_copy: list[bool]
    val_ids: list[list[int]]
    val_labels: list[int]
    ood: dict[str, tuple[list[list[int]], list[int]]]  # "ood_<set>" -> ids, labels

    @classmethod
    def of(
        cls,
        dataset: data.Dataset,
        split: data.Split,
        *,
        contractions: str = train.DEFAULT_CONTRACTIONS,
        tense_copies: str = train.DEFAULT_TENSE_COPIES,
        token_pattern: str = DEFAULTS.token_pattern,
        ood: dict[str, data.LabelledTexts] | None = None,
    ) -> Prepared:
        """As training.train prepares them: --contractions and --tense-copies applied, then tokenised with
        token_pattern."""
        made = data.training_texts(dataset.texts, split, contractions=contractions, tense_copies=tense_copies)
        texts, train_indices, source = made.texts, made.train, made.source
        ood = ood or {}
        tokens = preprocess.tokenize(
            [*data.take(texts, train_indices + split.validation), *(t for s in ood.values() for t in s.texts)],
            pattern=token_pattern,
        )
        train_tokens = tokens[: len(train_indices)]
        counts = preprocess.FeatureCounts.count(train_tokens, token_pattern=token_pattern)
        everything = counts.vocabulary(min_count=1, max_size=len(counts.features))
        encoded = everything.encode(tokens)
        labels = np.asarray(dataset.labels)
        train_sources = data.take(source, train_indices)
        start = len(train_indices) + len(split.validation)
        encoded_ood = {}
        for name, labelled in ood.items():
            encoded_ood[f"{train.OOD_PREFIX}{name}"] = (encoded[start : start + len(labelled.texts)], labelled.labels)
            start += len(labelled.texts)
        return cls(
            counts=counts,
            train_ids=encoded[: len(train_indices)],
            train_labels=labels[train_sources].tolist(),
            train_is_review=data.take(data.review_flags(dataset), train_sources),
            train_is_tense_copy=made.train_is_tense_copy(),
            val_ids=encoded[len(train_indices) : len(train_indices) + len(split.validation)],
            val_labels=labels[split.validation].tolist(),
            ood=encoded_ood,
        )

    def select(
        self, params: HyperParams
    ) -> tuple[int, list[list[int]], list[list[int]], dict[str, tuple[list[list[int]], list[int]]]]:
        """The vocabulary size and the training, validation and out-of-domain ids as featurize would give them."""
        size = len(self.counts.vocabulary(min_count=params.min_count, max_size=params.max_features))
        ood = {name: (preprocess.restrict(ids, size), labels) for name, (ids, labels) in self.ood.items()}
        return size, preprocess.restrict(self.train_ids, size), preprocess.restrict(self.val_ids, size), ood


def suggest(trial: optuna.Trial, *, epochs: int, fixed: dict[str, object]) -> HyperParams:
    """A trial's hyper-parameters: SPACE's values, the epoch budget, and the `fixed` ones (seed, tokenizer, ensemble
    size: see fixed_params), which are not searched."""
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
    return HyperParams(**values, epochs=epochs, **fixed)


def fixed_params(args: argparse.Namespace) -> dict[str, object]:
    """The HyperParams fields a search holds fixed, from its options."""
    return {
        "seed": args.seed,
        "split_apostrophes": args.split_apostrophes,
        "ensemble": args.ensemble,
        "feedback_weight": args.feedback_weight,
    }


def baseline_floors(dataset: data.Dataset, split: data.Split, ood: dict[str, data.LabelledTexts]) -> dict[str, float]:
    """The TF-IDF baseline's accuracy, trained on the training split as given, on validation and on each
    out-of-domain set, keyed as the trials' kept-epoch metrics (val_accuracy, ood_<set>_accuracy)."""
    log("training the TF-IDF baseline for the floors ...")
    labels = np.asarray(dataset.labels)
    pipeline = baseline.fit_baseline(data.take(dataset.texts, split.train), labels[split.train])
    floors = {
        "val_accuracy": baseline.accuracy(
            pipeline, data.take(dataset.texts, split.validation), labels[split.validation]
        )
    }
    for name, labelled in ood.items():
        floors[f"{train.OOD_PREFIX}{name}_accuracy"] = baseline.accuracy(pipeline, labelled.texts, labelled.labels)
    log("baseline: " + ", ".join(f"{name} {value:.4f}" for name, value in floors.items()))
    return floors


def objective_value(kept: dict[str, float], objective: str) -> float:
    """The objective of the epoch fit keeps (train.kept_epoch_metrics): its validation accuracy, or for `mixed` the
    mean of that and its accuracy on each out-of-domain set."""
    if objective == "validation":
        return kept[VALIDATION_ACCURACY_METRIC]
    ood = [v for k, v in kept.items() if k.startswith(f"best_{train.OOD_PREFIX}") and k.endswith("_accuracy")]
    if not ood:
        raise ValueError("the mixed objective needs at least one out-of-domain set")
    return float(np.mean([kept[VALIDATION_ACCURACY_METRIC], *ood]))


def search(
    prepared: Prepared,
    *,
    trials: int,
    timeout: float | None,
    max_epochs: int,
    seed: int,
    fixed: dict[str, object],
    objective: str = "validation",
    floors: dict[str, float] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run the study under the active MLflow run, each trial a nested run; the first trial is training.train's
    defaults, so the search starts from the model as it is. `floors` (kept-epoch metric without its `best_`
    prefix -> minimum) become Optuna constraints: TPE steers towards trials that meet them all, and
    study.best_trial is the best of those."""
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS),
        pruner=pruner
        or optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH),
    )
    study.set_user_attr("objective", objective)
    study.enqueue_trial({name: getattr(DEFAULTS, name) for name in SPACE})
    study.optimize(
        lambda trial: _run_trial(
            trial,
            prepared,
            max_epochs=max_epochs,
            objective=objective,
            fixed=fixed,
            floors=floors or {},
        ),
        n_trials=trials,
        timeout=timeout,
        show_progress_bar=progress,
    )
    return study


def _run_trial(
    trial: optuna.Trial,
    prepared: Prepared,
    *,
    max_epochs: int,
    objective: str,
    fixed: dict[str, object],
    floors: dict[str, float],
) -> float:
    import mlflow

    params = suggest(trial, epochs=max_epochs, fixed=fixed)
    size, train_ids, val_ids, ood = prepared.select(params)
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        history.append(record)
        value = objective_value(train.kept_epoch_metrics(history), objective)
        train.log_epoch(mlflow, epoch, {**record, OBJECTIVE: value})
        trial.report(value, epoch)
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
                train_is_review=prepared.train_is_review,
                train_is_tense_copy=prepared.train_is_tense_copy,
                threshold=THRESHOLD,
                watch=ood if objective == "mixed" else None,
                on_epoch=on_epoch,
                progress=False,
            )
        except optuna.TrialPruned as exc:
            pruned = exc
        kept = train.kept_epoch_metrics(history)
        kept[OBJECTIVE] = objective_value(kept, objective)
        mlflow.log_metrics(kept)
        for name, floor in floors.items():  # > 0 violates: the trial is below the floor by that much
            trial.set_constraint(name, floor - kept[f"best_{name}"])
        feasible = all(floor <= kept[f"best_{name}"] for name, floor in floors.items())
        mlflow.set_tag("feasible", str(feasible).lower())
        trial.set_user_attr("kept_epoch_metrics", kept)
        # A pruned trial is a deliberate early stop, not a failure: its run ends FINISHED, tagged.
        state = TrialState.COMPLETE if pruned is None else TrialState.PRUNED
        mlflow.set_tags({STATE_TAG: state.name, "pruned": str(pruned is not None).lower()})
    if pruned is not None:
        raise pruned
    return kept[OBJECTIVE]


def best_trial(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, bool]:
    """(the best completed trial that meets every constraint, True), or when none does (the best completed, False)."""
    try:
        return study.best_trial, True
    except ValueError:  # Optuna: no feasible trial completed
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return max(completed, key=lambda t: t.value), False


def best_params(best: optuna.trial.FrozenTrial, fixed: dict[str, object]) -> HyperParams:
    """A trial's hyper-parameters, its epochs the epoch fit kept (training that many gives its weights)."""
    epochs = int(best.user_attrs["kept_epoch_metrics"]["best_epoch"])
    return HyperParams(**best.params, epochs=epochs, **fixed)


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

    ood = train.load_ood(args) if args.objective == "mixed" else {}
    log("tokenising once for every trial ...")
    token_pattern = HyperParams(split_apostrophes=args.split_apostrophes).token_pattern
    prepared = Prepared.of(
        dataset,
        split,
        contractions=args.contractions,
        tense_copies=args.tense_copies,
        token_pattern=token_pattern,
        ood=ood,
    )
    log(f"features: {len(prepared.counts.features)} unigrams and bigrams seen in training")
    floors = baseline_floors(dataset, split, ood) if args.baseline_floor else {}
    with mlflow.start_run(run_name="optuna search") as parent:
        _log_settings(args, dataset, split)
        mlflow.log_metrics({f"baseline_{name}": value for name, value in floors.items()})
        study = search(
            prepared,
            trials=args.trials,
            timeout=args.timeout,
            max_epochs=args.max_epochs,
            seed=args.seed,
            objective=args.objective,
            fixed=fixed_params(args),
            floors=floors,
            progress=not args.quiet,
        )
        mlflow.set_tags({"sampler": type(study.sampler).__name__, "pruner": type(study.pruner).__name__})
        counts = {state.name.lower(): len(study.get_trials(states=(state,))) for state in TrialState}
        counts = {state: n for state, n in counts.items() if n}
        mlflow.log_metrics({f"trials_{state}": n for state, n in counts.items()})
        # The first trial cannot be pruned (the pruner waits for completed trials) nor cut by the timeout.
        best, feasible = best_trial(study)
        params = best_params(best, fixed_params(args))
        mlflow.set_tag("best_trial_feasible", str(feasible).lower())
        if not feasible:
            log("no trial reached the baseline on every set: the best trial below is the best regardless")
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
        "best_trial_feasible": feasible,
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
            "objective": args.objective,
            "contractions": args.contractions,
            "tense_copies": args.tense_copies,
            "split_apostrophes": args.split_apostrophes,
            "ensemble": args.ensemble,
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
            "feasible": all(v <= 0 for v in t.constraints.values()) if t.state == TrialState.COMPLETE else None,
            "value": t.value,
            "params": t.params,
            "epochs_trained": max(t.intermediate_values, default=0),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
        }
        for t in study.trials
    ]
    result = {
        "objective": study.user_attrs.get("objective"),
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": dataclasses.asdict(params),
        "command": command,
        "trials": trials,
    }
    mlflow.log_dict(result, "search/result.json")


if __name__ == "__main__":
    sys.exit(main())
