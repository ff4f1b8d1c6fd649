import json
import re
from pathlib import Path

import pytest

from sentiment_core.training_data import FINGERPRINT_TAG, DataObject, TrainingSettings, fingerprint
from tests.support import run_training
from training import data
from training.fit import HyperParams
from training.train import command_line, hyper_params, parse_args, parse_tags, run_tags

SMALL = ["--limit", "3000", "--epochs", "2", "--embedding-dim", "8"]


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_documents_every_option(capsys) -> None:
    parser_options = set(re.findall(r"--[a-z][a-z-]+", help_text(capsys)))
    for option in [
        "--data",
        "--positive-min-stars",
        "--tracking-uri",
        "--register",
        "--promote",
        "--output-dir",
        "--epochs",
        "--learning-rate",
        "--seed",
        "--embedding-dim",
        "--threshold",
        "--weight-decay",
        "--label-smoothing",
        "--feature-dropout",
        "--review-weight",
        "--feedback-weight",
        "--exclude-texts",
        "--tag",
        "--challenge",
        "--auto-promote",
    ]:
        assert option in parser_options


def test_help_states_each_default_at_most_once_and_none_for_flags(capsys) -> None:
    text = help_text(capsys)
    # One entry per option: its lines up to the next option.
    entries = re.split(r"\n  (?=--)", text.split("options:", 1)[1])

    for entry in entries:
        assert len(re.findall(r"default", entry, flags=re.IGNORECASE)) <= 1, entry
        # A one-way flag (--register) is off unless given; an --x/--no-x pair says which way it defaults.
        if ", --no-" not in entry.split("\n", 1)[0]:
            assert "(default: False)" not in entry, entry
    assert "(default: None)" not in text
    assert "(default: 500000)" in text  # --max-features still shows its default


@pytest.mark.parametrize(
    "argv",
    [
        ["--threshold", "1.5"],
        ["--epochs", "many"],
        ["--limit", "3"],
        ["--no-such-option"],
        ["--label-smoothing", "1"],
        ["--feature-dropout", "-0.1"],
        ["--review-weight", "0"],
        ["--weight-decay", "-1"],
        ["--feedback-weight", "0"],
        ["--tag", "novalue"],
        ["--tag", "=v"],
        ["--tag", "a=1", "--tag", "a=2"],
        ["--tag", "mlflow.source.git.commit=abc"],
        ["--tag", "bad key!=1"],
        ["--auto-promote", "canary"],
        ["--challenge", "--auto-promote", "always"],
    ],
)
def test_parse_args_bad_options_exit_with_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)

    assert exited.value.code == 2


def test_hyper_params_parse_from_the_command_line_with_the_dataclass_defaults() -> None:
    assert hyper_params(parse_args([])) == HyperParams()
    assert hyper_params(parse_args(["--label-smoothing", "0.1", "--review-weight", "2"])) == HyperParams(
        label_smoothing=0.1, review_weight=2.0
    )


def test_parse_args_promote_implies_register() -> None:
    assert parse_args(["--promote"]).register is True


def test_parse_args_challenge_implies_register_and_never_promotes_by_default() -> None:
    args = parse_args(["--challenge"])

    assert (args.register, args.promote, args.auto_promote) == (True, False, "never")


@pytest.mark.parametrize(
    ("pairs", "tags"),
    [
        ([], {}),
        (["trigger=manual"], {"trigger": "manual"}),
        (["a=b=c", "empty="], {"a": "b=c", "empty": ""}),
        (
            ["training_image=europe-docker.pkg.dev/p/r/train@sha256:ab"],
            {"training_image": "europe-docker.pkg.dev/p/r/train@sha256:ab"},
        ),
    ],
)
def test_parse_tags_splits_at_the_first_equals_sign(pairs: list[str], tags: dict[str, str]) -> None:
    assert parse_tags(pairs) == tags


def gcs_dataset(*objects: tuple[str, str, str]) -> data.Dataset:
    reports = [data.SourceReport(f"gs://bkt/{n}#{g}", "yelp_json", generation=g, md5=m, used=1) for n, g, m in objects]
    return data.Dataset([f"t{i}" for i in range(len(reports))], [1] * len(reports), reports, data.LabelRule())


OBJECTS = (("p/yelp/a.jsonl", "11", "bWQ1YQ=="), ("p/feedback/f.jsonl", "12", "bWQ1Yg=="))


def test_run_tags_accepts_the_fingerprint_of_the_objects_read_and_adds_image_build_and_commit() -> None:
    env = {"RETRAIN_ARGS": "--epochs 1", "TRAINING_IMAGE": "img@sha256:1", "GIT_COMMIT": "abc123"}
    env["TRAINING_BUILD"] = "b0c1d2e3-build"
    expected = fingerprint([DataObject(*o) for o in OBJECTS], TrainingSettings(("--epochs", "1"), "img@sha256:1"))
    args = parse_args(["--tag", f"{FINGERPRINT_TAG}={expected}", "--tag", "trigger=retrain_check"])

    tags = run_tags(args, gcs_dataset(*reversed(OBJECTS)), env)

    assert tags == {
        FINGERPRINT_TAG: expected,
        "trigger": "retrain_check",
        "training_image": "img@sha256:1",
        "training_build": "b0c1d2e3-build",
        "mlflow.source.git.commit": "abc123",
    }


@pytest.mark.parametrize(
    ("env", "objects"),
    [
        ({"RETRAIN_ARGS": "--epochs 2"}, OBJECTS),  # other settings
        ({"RETRAIN_ARGS": "--epochs 1"}, OBJECTS[:1]),  # other data
        ({"RETRAIN_ARGS": "--epochs 1"}, (("p/yelp/a.jsonl", "13", "bWQ1YQ=="), OBJECTS[1])),  # a new generation
    ],
    ids=["settings", "objects", "generation"],
)
def test_run_tags_fingerprint_of_other_data_or_settings_is_refused(env: dict, objects: tuple) -> None:
    listed = fingerprint([DataObject(*o) for o in OBJECTS], TrainingSettings(("--epochs", "1")))
    args = parse_args(["--tag", f"{FINGERPRINT_TAG}={listed}"])

    with pytest.raises(data.DataError, match="is not the one given"):
        run_tags(args, gcs_dataset(*objects), env)


def test_run_tags_local_data_gets_no_fingerprint_and_refuses_one() -> None:
    local = data.Dataset(["t"], [1], [data.SourceReport("/data/r.jsonl", "yelp_json", used=1)], data.LabelRule())

    assert run_tags(parse_args([]), local, {}) == {}
    assert run_tags(parse_args([]), gcs_dataset(*OBJECTS), {}) == {}  # by hand, without the job's tag: none
    with pytest.raises(data.DataError, match="not every source is a gs:// object"):
        run_tags(parse_args(["--tag", f"{FINGERPRINT_TAG}=abc"]), local, {})


@pytest.mark.parametrize("flags", [True, False], ids=["switches-on", "switches-off"])
def test_command_line_parses_back_into_the_same_params_and_data(flags: bool) -> None:
    params = HyperParams(
        embedding_dim=48,
        epochs=3,
        learning_rate=0.012298748183751155,
        lr_decay=0.5,
        seed=7,
        label_smoothing=0.05,
        tense_copy_weight=0.5,
        feedback_weight=2.5,
        ensemble=2,
        idf_weighting=flags,
        balance_classes=flags,
        split_apostrophes=not flags,
    )
    data_options = ["--data", "a.csv", "--data", "gs://b/c/", "--limit", "500", "--val-fraction", "0.2"]
    data_options += ["--exclude-texts", "gs://b/c/holdout/", "--exclude-texts", "x.sha256"]
    data_args = parse_args([*data_options, "--contractions", "both", "--tense-copies", "both", "--ood-dir", "/tmp/o"])

    parsed = parse_args(command_line(params, data_args))

    assert hyper_params(parsed) == params
    names = (
        "data",
        "exclude_texts",
        "limit",
        "val_fraction",
        "test_fraction",
        "positive_min_stars",
        "contractions",
        "tense_copies",
    )
    for name in (*names, "ood_dir"):
        assert getattr(parsed, name) == getattr(data_args, name)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The same small training twice, with a local SQLite store (no server): outputs, checkpoints and results."""
    folder = tmp_path_factory.mktemp("two-runs")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    runs = [
        run_training(
            [
                *["--tracking-uri", store, *SMALL],
                *["--output-dir", str(folder / f"out{i}"), "--checkpoint", str(folder / f"out{i}.pt")],
            ]
        )
        for i in (1, 2)
    ]
    return folder, runs


@pytest.mark.system  # runs training as a user does, in a child process
def test_train_local_store_same_seed_gives_same_metrics(two_runs) -> None:
    """Works without a server (a local SQLite store), and a seed fixes every metric."""
    folder, runs = two_runs

    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-3000:]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert first["run_id"] != second["run_id"]
    assert (first["test_accuracy"], first["test_roc_auc"]) == (second["test_accuracy"], second["test_roc_auc"])
    manifests = [json.loads((folder / f"out{i}" / "manifest.json").read_text()) for i in (1, 2)]
    assert manifests[0]["model_version"] is None  # not registered
    assert manifests[0]["mlflow_run_id"] == first["run_id"]


@pytest.mark.system  # runs training as a user does, in a child process
def test_train_reports_bad_lines_and_never_crashes_on_them(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.jsonl"
    good = [
        json.dumps({"stars": 5 if i % 2 else 1, "text": f"review number {i} was {'good' if i % 2 else 'bad'}"})
        for i in range(60)
    ]
    reviews.write_text("\n".join([*good, "{broken", json.dumps({"stars": 3, "text": ""})]) + "\n")

    result = run_training(["--data", str(reviews), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--epochs", "1"])

    assert result.returncode == 0, result.stderr[-3000:]
    assert "62 lines, 60 used, 1 malformed, 1 empty, 0 unknown label, 0 duplicate" in result.stderr
    assert "line 61: malformed" in result.stderr


@pytest.mark.system  # runs training as a user does, in a child process
def test_train_missing_data_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = run_training(["--data", str(tmp_path / "nope.csv"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])

    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.system  # runs training as a user does, in a child process
def test_train_unreachable_tracking_server_fails_fast(tmp_path: Path) -> None:
    from localdev.services import free_port

    result = run_training(["--tracking-uri", f"http://127.0.0.1:{free_port()}", *SMALL], timeout=120)

    assert result.returncode == 3
    assert "cannot reach the MLflow tracking store" in result.stderr


@pytest.mark.system  # runs training as a user does, in a child process
def test_train_checkpoint_reproduces_the_exported_model(two_runs) -> None:
    """--checkpoint writes the PyTorch weights of the very model that was exported."""
    from training import export
    from training.model import load_checkpoint

    folder, runs = two_runs
    assert runs[0].returncode == 0, runs[0].stderr[-3000:]
    model, vocabulary = load_checkpoint(folder / "out1.pt")
    assert vocabulary.token_pattern == HyperParams().token_pattern  # the checkpoint carries its tokenizer
    texts = ["great food", "awful service", "", "the food was not good", "it wasn't good, they didn't care"]

    session = export.session((folder / "out1" / "model.onnx").read_bytes())
    difference = export.onnx_probabilities(session, texts) - export.torch_probabilities(model, vocabulary, texts)

    assert abs(difference).max() <= export.PARITY_TOLERANCE
