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
from tests.support import run_training
from training import data, preprocess, train, tune
from training.fit import HyperParams

# Small enough for a trial in seconds on two cores; the accuracy is beside the point here.
QUICK = ["--limit", "1000", "--max-epochs", "2"]


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
    dataset = data.Dataset(texts=texts, labels=labels * 20, reports=[], label_rule=data.LabelRule())
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

    size, train_ids, val_ids = prepared.select(HyperParams(min_count=min_count, max_features=max_features))

    vocabulary, encoded = preprocess.featurize(dataset.texts, split.train, min_count=min_count, max_size=max_features)
    assert size == len(vocabulary)
    assert train_ids == data.take(encoded, split.train)
    assert val_ids == data.take(encoded, split.validation)


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
            prepared, trials=2, timeout=None, max_epochs=3, seed=1, pruner=PruneAfterTheFirstTrial(), progress=False
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
    best = max(completed, key=lambda r: (r.data.metrics[tune.OBJECTIVE], -int(r.data.tags[tune.TRIAL_TAG])))
    assert parent.data.tags["best_trial_run_id"] == best.info.run_id
    assert parent.data.metrics[tune.OBJECTIVE] == best.data.metrics[tune.OBJECTIVE]
    expected = {
        **{name: best.data.params[name] for name in tune.SPACE},
        "epochs": str(int(best.data.metrics["best_epoch"])),  # the epoch kept, not the budget
        "seed": str(train.DEFAULTS.seed),
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
    assert registered.data.metrics[tune.OBJECTIVE] == pytest.approx(summary[tune.OBJECTIVE], abs=5e-5)
    assert client.get_run(summary["best_run_id"]).data.metrics[tune.OBJECTIVE] == pytest.approx(
        registered.data.metrics[tune.OBJECTIVE], abs=1e-12
    )
    version = client.get_model_version(tune.MODEL_NAME, summary["model_version"])
    assert version.run_id == registered.info.run_id


@pytest.mark.system  # runs the search as a user does, in a child process
def test_tune_unreachable_tracking_server_fails_fast() -> None:
    result = run_tune(["--tracking-uri", f"http://127.0.0.1:{services.free_port()}", *QUICK], timeout=120)

    assert result.returncode == 3
    assert "cannot reach the MLflow tracking store" in result.stderr
