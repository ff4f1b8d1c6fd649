import dataclasses
import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from localdev import services
from sentiment_core.contract import VALIDATION_ACCURACY_METRIC
from tests.support import run_training
from training import data, preprocess, train, tune
from training.fit import HyperParams

# Small enough for a trial in seconds on two cores; the accuracy is beside the point here.
QUICK = ["--limit", "1000", "--max-epochs", "2", "--ensemble", "1"]


def run_tune(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m training.tune --quiet ARGS` in a child process, as a user runs it."""
    return run_training(args, timeout=timeout, module="training.tune")


def summary_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def toy_dataset() -> tuple[data.Dataset, data.Split]:
    positive = ["great food", "lovely staff", "great service and lovely food", "amazing place", "great great"]
    negative = ["awful food", "rude staff", "awful service and rude people", "horrible place", "awful awful"]
    texts = [f"{text} {i}" for i in range(20) for text in positive + negative]
    labels = [1] * len(positive) + [0] * len(negative)
    report = data.SourceReport("toy.csv", "polarity_csv", lines=len(texts), used=len(texts))
    dataset = data.Dataset(texts=texts, labels=labels * 20, reports=[report], label_rule=data.LabelRule())
    return dataset, data.stratified_split(dataset.labels, val_fraction=0.2, test_fraction=0.1, seed=1, texts=texts)


@pytest.mark.parametrize(
    "argv",
    [
        ["--trials", "0"],
        ["--trials", "many"],
        ["--timeout", "0"],
        ["--timeout", "-5"],
        ["--max-epochs", "0"],
        ["--limit", "3"],
        ["--no-such-option"],
    ],
)
def test_parse_args_bad_options_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        tune.parse_args(argv)

    assert exited.value.code == 2


def test_search_space_holds_the_training_defaults() -> None:
    """The first trial is training.train's defaults: they must be values the space can take."""
    for name, distribution in tune.SPACE.items():
        value = getattr(train.DEFAULTS, name)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            assert value in distribution.choices, name
        else:
            assert distribution.low <= value <= distribution.high, name


@pytest.mark.parametrize(("min_count", "max_features"), [(1, 10_000), (2, 10_000), (3, 7), (1, 1), (99, 10)])
def test_prepared_select_gives_what_featurize_gives(min_count: int, max_features: int) -> None:
    dataset, split = toy_dataset()
    prepared = tune.Prepared.of(dataset, split)

    size, train_ids, val_ids, ood = prepared.select(HyperParams(min_count=min_count, max_features=max_features))

    vocabulary, encoded = preprocess.featurize(dataset.texts, split.train, min_count=min_count, max_size=max_features)
    assert size == len(vocabulary)
    assert train_ids == data.take(encoded, split.train)
    assert val_ids == data.take(encoded, split.validation)
    assert ood == {}


def test_prepared_applies_contractions_and_tokenizer_and_encodes_ood_sets_as_training_would() -> None:
    dataset, split = toy_dataset()
    dataset.texts = [text.replace("awful", "did n't like") for text in dataset.texts]
    ood = {"movies": data.LabelledTexts(["didn't like it", "great food"], [0, 1])}
    params = HyperParams(split_apostrophes=True, min_count=1)

    prepared = tune.Prepared.of(
        dataset, split, contractions="both-negations", token_pattern=params.token_pattern, ood=ood
    )
    size, train_ids, val_ids, encoded_ood = prepared.select(params)

    texts, train_indices, source = data.with_contractions(dataset.texts, split, "both-negations")
    vocabulary, encoded = preprocess.featurize(
        texts, train_indices, min_count=1, max_size=params.max_features, token_pattern=params.token_pattern
    )
    assert len(train_indices) > len(split.train)  # the joined copies are trained on
    assert size == len(vocabulary)
    assert train_ids == data.take(encoded, train_indices)
    assert val_ids == data.take(encoded, split.validation)
    assert prepared.train_labels == data.take(dataset.labels, data.take(source, train_indices))
    tokens = preprocess.tokenize(ood["movies"].texts, pattern=params.token_pattern)
    assert encoded_ood == {"ood_movies": (vocabulary.encode(tokens), [0, 1])}


def test_objective_value_mixed_is_the_mean_of_validation_and_each_ood_set() -> None:
    kept = {
        "best_epoch": 2,
        "best_val_accuracy": 0.9,
        "best_val_roc_auc": 0.99,
        "best_ood_a_accuracy": 0.6,
        "best_ood_b_accuracy": 0.75,
    }

    assert tune.objective_value(kept, "mixed") == pytest.approx(0.75)
    assert tune.objective_value(kept, "validation") == 0.9
    with pytest.raises(ValueError, match="out-of-domain"):
        tune.objective_value({"best_val_accuracy": 0.9}, "mixed")


def test_parse_args_mixed_objective_without_any_ood_folder_is_a_usage_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data, "DEFAULT_OOD_DIR", tmp_path / "absent")

    with pytest.raises(SystemExit) as exited:
        tune.parse_args([])

    assert exited.value.code == 2
    assert tune.parse_args(["--objective", "validation"]).objective == "validation"


@pytest.mark.parametrize(("limit", "best", "feasible"), [(2.0, 2.0, True), (0.0, 3.0, False)])
def test_best_trial_is_the_best_that_meets_the_floors_else_the_best(limit: float, best: float, feasible: bool) -> None:
    study = optuna.create_study(direction="maximize")
    for x in (1.0, 3.0, 2.0):
        study.enqueue_trial({"x": x})

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 5.0)
        trial.set_constraint("at_most_limit", x - limit)
        return x

    study.optimize(objective, n_trials=3)

    chosen, met = tune.best_trial(study)
    assert (chosen.value, met) == (best, feasible)


class PruneAfterTheFirstTrial(optuna.pruners.BasePruner):
    """Every trial but the first is pruned at its first report."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number > 0


@pytest.fixture
def experiment(mlflow_server: services.Service) -> Iterator[str]:
    """A fresh experiment in the session's MLflow server, selected in this process; the previous URI restored."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    name = f"tune-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(name)
    try:
        yield name
    finally:
        mlflow.set_tracking_uri(previous)


def test_search_pruned_trial_is_recorded_as_pruned(experiment: str, mlflow_server: services.Service) -> None:
    prepared = tune.Prepared.of(*toy_dataset())

    with mlflow.start_run() as parent:
        study = tune.search(
            prepared,
            trials=2,
            timeout=None,
            max_epochs=3,
            seed=1,
            fixed={"seed": 1, "split_apostrophes": train.DEFAULTS.split_apostrophes, "ensemble": 1},
            pruner=PruneAfterTheFirstTrial(),
            progress=False,
        )

    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    client = MlflowClient(mlflow_server.url)
    runs = {
        r.data.tags[tune.TRIAL_TAG]: r
        for r in client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
    }
    assert runs["1"].info.status == "FINISHED"
    assert (runs["1"].data.tags["pruned"], runs["1"].data.tags[tune.STATE_TAG]) == ("true", "PRUNED")
    assert (runs["0"].data.tags["pruned"], runs["0"].data.tags[tune.STATE_TAG]) == ("false", "COMPLETE")
    epochs = {n: [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] for n, r in runs.items()}
    assert epochs == {"0": [1, 2, 3], "1": [1]}


def test_tune_leaves_a_nested_run_per_trial_and_the_best_on_the_parent(mlflow_server: services.Service) -> None:
    experiment = f"tune-{uuid.uuid4().hex[:8]}"

    result = run_tune(["--trials", "4", *QUICK, "--tracking-uri", mlflow_server.url, "--experiment", experiment])

    summary = summary_of(result)
    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(summary["parent_run_id"])
    trials = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(int(r.data.tags[tune.TRIAL_TAG]) for r in trials) == [0, 1, 2, 3]
    assert {parent.data.tags["search"], parent.data.tags["sampler"], parent.data.tags["seed"]} == {
        "optuna",
        "TPESampler",
        str(train.DEFAULTS.seed),
    }
    completed = [r for r in trials if r.data.tags[tune.STATE_TAG] == "COMPLETE"]
    floors = {k.removeprefix("baseline_"): v for k, v in parent.data.metrics.items() if k.startswith("baseline_")}
    assert set(floors) == {
        "val_accuracy",
        *(f"ood_{name}_accuracy" for name in data.load_ood_sets(data.DEFAULT_OOD_DIR)),
    }
    for run in trials:  # feasible: at least the TF-IDF baseline on validation and every out-of-domain set
        meets = all(run.data.metrics[f"best_{name}"] >= floor for name, floor in floors.items())
        assert run.data.tags["feasible"] == str(meets).lower()
    feasible = [r for r in completed if r.data.tags["feasible"] == "true"]
    assert parent.data.tags["best_trial_feasible"] == str(bool(feasible)).lower()
    candidates = feasible or completed
    best = max(candidates, key=lambda r: (r.data.metrics[tune.OBJECTIVE], -int(r.data.tags[tune.TRIAL_TAG])))
    assert parent.data.tags["best_trial_run_id"] == best.info.run_id
    assert parent.data.metrics[tune.OBJECTIVE] == best.data.metrics[tune.OBJECTIVE]
    for run in completed:  # the default objective, mixed: validation and every out-of-domain set, equal weights
        ood = [v for k, v in run.data.metrics.items() if k.startswith("best_ood_") and k.endswith("_accuracy")]
        assert len(ood) == len(data.load_ood_sets(data.DEFAULT_OOD_DIR))
        mixed = (run.data.metrics["best_val_accuracy"] + sum(ood)) / (1 + len(ood))
        assert run.data.metrics[tune.OBJECTIVE] == pytest.approx(mixed, abs=1e-9)
    expected = {
        **{name: best.data.params[name] for name in tune.SPACE},
        "epochs": str(int(best.data.metrics["best_epoch"])),  # the epoch kept, not the budget
        "seed": str(train.DEFAULTS.seed),
        "split_apostrophes": str(train.DEFAULTS.split_apostrophes),
        "ensemble": "1",  # --ensemble, held fixed
        "feedback_weight": str(train.DEFAULTS.feedback_weight),  # --feedback-weight, held fixed
    }
    assert {name: parent.data.params[f"best_{name}"] for name in expected} == expected
    # The printed command, on stdout and on the parent, is training.train's with those very parameters.
    command = result.stdout.strip().splitlines()[-2]
    assert command == parent.data.tags["reproduce_command"] == summary["command"]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "training.train"]
    parsed = train.parse_args(argv[3:])
    assert {k: str(v) for k, v in dataclasses.asdict(train.hyper_params(parsed)).items()} == expected
    assert parsed.limit == 1000
    record = json.loads(Path(client.download_artifacts(parent.info.run_id, "search/result.json")).read_text())
    assert [t["number"] for t in record["trials"]] == [0, 1, 2, 3]


@pytest.mark.system  # runs the search as a user does, in a child process, with a local SQLite store
def test_tune_register_trains_the_best_trial_to_its_value_and_registers_it(tmp_path: Path) -> None:
    """--register runs training.train's path with the best parameters, under the parent: the same split and seed
    give the best trial's own validation accuracy, and a registered version."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    summary = summary_of(
        run_tune(["--trials", "2", "--limit", "1000", "--max-epochs", "1", "--register", "--tracking-uri", store])
    )

    client = MlflowClient(store)
    registered = client.get_run(summary["registered_run_id"])
    assert registered.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
    best = client.get_run(summary["best_run_id"])
    assert registered.data.metrics[VALIDATION_ACCURACY_METRIC] == pytest.approx(
        best.data.metrics[VALIDATION_ACCURACY_METRIC], abs=1e-12
    )
    # The exported graph (temperature-scaled, which moves no answer at 0.5) answers the dev sets as the trial did.
    for name in data.load_ood_sets(data.DEFAULT_OOD_DIR):
        key = f"ood_{name}_accuracy"
        assert registered.data.metrics[key] == pytest.approx(best.data.metrics[f"best_{key}"], abs=1e-3), key
    version = client.get_model_version(tune.MODEL_NAME, summary["model_version"])
    assert version.run_id == registered.info.run_id


@pytest.mark.system  # runs the search as a user does, in a child process
def test_tune_unreachable_tracking_server_fails_fast() -> None:
    result = run_tune(["--tracking-uri", f"http://127.0.0.1:{services.free_port()}", *QUICK], timeout=120)

    assert result.returncode == 3
    assert "cannot reach the MLflow tracking store" in result.stderr
