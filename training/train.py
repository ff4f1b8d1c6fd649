"""Command line: `python -m training.train --help`. Pure steps live in data, preprocess, fit, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sentiment_core.contract import BEHAVIOUR_PASS_RATE_METRIC, MODEL_NAME, REFERENCE_ARTIFACT
from sentiment_core.manifest import sha256_bytes, write_staged_folder
from sentiment_core.monitoring import Reference
from sentiment_core.training_data import FINGERPRINT_TAG, TrainingSettings, fingerprint
from training import behaviour, calibration, challenger, data, evaluate, export, preprocess
from training.challenger import AutoPromote
from training.fit import HyperParams, fit
from training.golden import GOLDEN_TEXTS
from training.model import save_checkpoint

DEFAULTS = HyperParams()
THRESHOLD = 0.5
DEFAULT_CONTRACTIONS = "both-negations"
DEFAULT_TENSE_COPIES = "past"
OOD_PREFIX = "ood_"  # MLflow metrics ood_<file stem>_accuracy: the out-of-domain dev sets


# Each help text states its own default, once (argparse expands %(default)s); flags and unset options have none.
D = " (default: %(default)s)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the Yelp review sentiment model, track it in MLflow, export and register ONNX.",
    )
    add_data_arguments(parser)

    group = parser.add_argument_group("model")
    group.add_argument("--embedding-dim", type=int, default=DEFAULTS.embedding_dim, help="embedding size" + D)
    group.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training set" + D)
    group.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="examples per step" + D)
    group.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate, help="Adam learning rate" + D)
    group.add_argument("--lr-decay", type=float, default=DEFAULTS.lr_decay, help="learning-rate factor per epoch" + D)
    group.add_argument("--min-count", type=int, default=DEFAULTS.min_count, help="drop features seen fewer times" + D)
    group.add_argument("--max-features", type=int, default=DEFAULTS.max_features, help="vocabulary cap" + D)
    group.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed for the split and the training" + D)
    group.add_argument("--threshold", type=float, default=THRESHOLD, help="decision threshold stored in the model" + D)
    # Levers for out-of-domain text (docs/model-card.md, "Out-of-domain accuracy: what we tried").
    for name, text in (
        ("weight_decay", "decoupled (AdamW-style) decay of every embedding row per step, times the learning rate"),
        ("label_smoothing", "targets 1 - s/2 and s/2 instead of 1 and 0"),
        ("feature_dropout", "probability of dropping each feature id of a training text, per step"),
        ("review_weight", "loss weight of a full review (JSON) relative to a sentence (CSV)"),
        ("tense_copy_weight", "loss weight of a tense copy (--tense-copies) relative to its original"),
        ("feedback_weight", "loss weight of an example of a feedback source (a feedback/ folder: users' answers)"),
    ):
        group.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(DEFAULTS, name), help=text + D)
    group.add_argument(
        "--ensemble",
        type=at_least(1),
        default=DEFAULTS.ensemble,
        help="models trained side by side (their own seeds) and averaged into one: the same graph and size, the "
        "training time times N" + D,
    )
    # --x / --no-x, so a reproducing command (command_line) states every choice whatever the defaults become.
    for name, text in (
        ("idf_weighting", "weight each feature by its idf in the bag's mean (the graph's nodes are unchanged)"),
        ("split_apostrophes", 'tokenise "it\'s" as "it", "\'s" (the exported graph\'s Tokenizer uses the same regex)'),
        ("balance_classes", "weight the loss so both classes carry the same total weight"),
    ):
        group.add_argument(
            "--" + name.replace("_", "-"),
            action=argparse.BooleanOptionalAction,
            default=getattr(DEFAULTS, name),
            help=text + D,
        )

    add_tracking_arguments(parser)
    group = parser.add_argument_group("registration and output")
    group.add_argument("--run-name", default=None, help="MLflow run name")
    group.add_argument("--register", action="store_true", help=f"register the model as a version of {MODEL_NAME}")
    group.add_argument(
        "--promote", action="store_true", help="also point the alias 'production' at it (implies --register)"
    )
    group.add_argument(
        "--output-dir", type=Path, default=None, help="also write a staged folder (model.onnx + manifest.json)"
    )
    group.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="also write the PyTorch checkpoint (state dict + vocabulary, torch.load(weights_only=True))",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")

    group = parser.add_argument_group("continuous training (training.job passes these)")
    group.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the run (repeatable), e.g. trigger=manual; training_fingerprint is checked against the "
        "data read",
    )
    group.add_argument(
        "--challenge",
        action="store_true",
        help="judge the new version against the production one on the same sets (challenger/ artifacts, version "
        "tags challenger_of and beats_champion; implies --register)",
    )
    group.add_argument(
        "--auto-promote",
        choices=[m.value for m in AutoPromote],
        default=AutoPromote.NEVER.value,
        help="with --challenge: 'canary' points the alias production at a challenger that beats the champion" + D,
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        parser.error("--threshold must be between 0 and 1")
    try:
        args.tags = parse_tags(args.tag)
    except ValueError as exc:
        parser.error(str(exc))
    if args.auto_promote != AutoPromote.NEVER.value and not args.challenge:
        parser.error("--auto-promote needs --challenge")
    args.register = args.register or args.promote or args.challenge
    try:
        hyper_params(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the data and its split: the same in training.train and training.tune."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        action="append",
        metavar="PATH_OR_URI",
        help="file or folder, local or gs://bucket/path (repeat for several; a gs:// folder ends in '/'). "
        f"Formats: Yelp review JSON lines (.jsonl/.json) and Yelp Polarity CSV (.csv), optionally .gz. "
        f"Default: every file in {data.DEFAULT_DATA_DIR}",
    )
    group.add_argument(
        "--exclude-texts",
        action="append",
        metavar="URI",
        help="a .sha256 file, a folder or a gs:// prefix of them (repeatable): one hex sha256 of a UTF-8 text a "
        "line; examples whose stripped text hashes to one are dropped before the split (the deploy gate's "
        "evaluation set: training.eval_set --hashes-output)",
    )
    group.add_argument(
        "--positive-min-stars", type=float, default=3.0, help="a review is positive when stars >= this value" + D
    )
    group.add_argument("--val-fraction", type=float, default=0.1, help="share of each class for validation" + D)
    group.add_argument("--test-fraction", type=float, default=0.1, help="share of each class for the test set" + D)
    group.add_argument(
        "--limit", type=at_least(10), default=None, help="use only the first N usable examples (quick runs)"
    )
    group.add_argument(
        "--ood-dir",
        default=None,
        metavar="DIR",
        help="out-of-domain dev sets (label<TAB>text .tsv files, a folder or a gs:// prefix), scored and logged as "
        "ood_<file>_accuracy; never "
        f"trained on (default: {data.DEFAULT_OOD_DIR} when it exists)",
    )
    group.add_argument(
        "--contractions",
        choices=data.CONTRACTIONS,
        default=DEFAULT_CONTRACTIONS,
        help='the polarity sentences are tokenised ("did n\'t", "it \'s"), users write "didn\'t": train on them '
        "as given, joined (training and validation texts), or both (training texts as given plus a joined copy of "
        "each that changes); the test split stays as given" + D,
    )
    group.add_argument(
        "--tense-copies",
        choices=data.TENSE_COPIES,
        default=DEFAULT_TENSE_COPIES,
        help='also train on a copy of each training text with "is"/"are" in the past tense ("past"), or also on '
        'one of each with "was"/"were" in the present ("both"), same label: the training sentences narrate '
        "complaints in the past, so short past-tense praise read as negative" + D,
    )


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Where runs go: the same in training.train and training.tune."""
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking server or store (default: $MLFLOW_TRACKING_URI, else MLflow's local store)",
    )
    group.add_argument("--experiment", default="yelp-sentiment", help="MLflow experiment name" + D)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than minimum."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    parse.__name__ = "integer"  # argparse's message for a non-number: "invalid integer value: 'x'"
    return parse


def hyper_params(args: argparse.Namespace) -> HyperParams:
    names = {f.name for f in dataclasses.fields(HyperParams)}
    return HyperParams(**{name: getattr(args, name) for name in names})


def command_line(params: HyperParams, args: argparse.Namespace) -> list[str]:
    """The options of training.train that train `params` on the data and split `args` name (the inverse of
    hyper_params and add_data_arguments): every value explicit, so later changes of defaults do not alter it."""
    argv = []
    for path in args.data or []:
        argv += ["--data", path]
    for uri in args.exclude_texts or []:
        argv += ["--exclude-texts", uri]
    argv += ["--positive-min-stars", repr(args.positive_min_stars)]
    argv += ["--val-fraction", repr(args.val_fraction), "--test-fraction", repr(args.test_fraction)]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.ood_dir is not None:
        argv += ["--ood-dir", str(args.ood_dir)]
    argv += ["--contractions", args.contractions, "--tense-copies", args.tense_copies]
    for name, value in dataclasses.asdict(params).items():
        option = name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{option}" if value else f"--no-{option}")
        else:
            argv += [f"--{option}", repr(value)]
    return argv


# MLflow's own tag keys allow these characters; a tag of the mlflow. namespace is MLflow's to set.
_TAG_KEY = re.compile(r"[A-Za-z0-9_.\-/ ]{1,250}")


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE pairs of --tag; a key twice, an empty key or one of MLflow's own (mlflow.*) is an error."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _TAG_KEY.fullmatch(key):
            raise ValueError(f"--tag expects KEY=VALUE with a key of letters, digits, _ - . / or spaces, got {pair!r}")
        if key.startswith("mlflow."):
            raise ValueError(f"--tag {key}: the mlflow. tags are MLflow's own")
        if key in tags:
            raise ValueError(f"--tag {key} given twice")
        if len(value) > 5000:
            raise ValueError(f"--tag {key}: a value holds 5000 characters at most")
        tags[key] = value
    return tags


def run_tags(args: argparse.Namespace, dataset: data.Dataset, env: dict[str, str] | None = None) -> dict[str, str]:
    """The run's tags: --tag's, training_fingerprint checked against the data read, the image, its build, the commit.

    When every source is a bucket object, training_fingerprint is the fingerprint of the objects as read (the
    generation served, the MD5 checked against the bytes) and of TrainingSettings (RETRAIN_ARGS,
    TRAINING_IMAGE): the retrain check then sees what the run learned from, not what a listing promised. A --tag
    training_fingerprint (the job's, of its listing) must equal it. A run of local files, or one by hand without
    the tag, gets none: its arguments are not RETRAIN_ARGS, so it must not tell the check the data are trained on.
    """
    env = dict(os.environ if env is None else env)
    tags = dict(getattr(args, "tags", {}) or {})
    objects = dataset.data_objects()
    given = tags.get(FINGERPRINT_TAG)
    if given is not None:
        if objects is None:
            raise data.DataError(f"--tag {FINGERPRINT_TAG} given, but not every source is a gs:// object")
        read = fingerprint(objects, TrainingSettings.from_env(env))
        if read != given:
            raise data.DataError(
                f"{FINGERPRINT_TAG} of the data read ({read[:12]}...) is not the one given ({given[:12]}...): the "
                "data or RETRAIN_ARGS/TRAINING_IMAGE changed since they were listed"
            )
    image = env.get("TRAINING_IMAGE", "")
    if image and "training_image" not in tags:
        tags["training_image"] = image
    build = env.get("TRAINING_BUILD", "")
    if build:
        tags["training_build"] = build  # the Cloud Build id that made the image (training/cloudbuild.yaml)
    commit = env.get("GIT_COMMIT", "")
    if commit:
        # An image has no .git: the commit it was built from comes in by name.
        tags["mlflow.source.git.commit"] = commit
    return tags


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (data.DataError, export.ExportError) as exc:
        log(f"error: {exc}")
        return 2


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    dataset, split = load_data(args)
    run_tags(args, dataset)  # a fingerprint that does not match fails here, before any training
    if connect(args) is None:
        return 3
    summary = train_and_log(args, dataset, split)
    print(json.dumps({**summary, "seconds": round(time.monotonic() - started, 1)}))
    return 0


def load_data(args: argparse.Namespace) -> tuple[data.Dataset, data.Split]:
    """The data the options of add_data_arguments name, reported, and its split by --seed."""
    exclude = data.load_excluded_hashes(args.exclude_texts or [])
    if args.exclude_texts:
        log(f"excluded texts: {len(exclude)} hashes from {', '.join(args.exclude_texts)}")
    dataset = data.load_dataset(args.data, data.LabelRule(args.positive_min_stars), exclude)
    if args.limit is not None:
        dataset.texts, dataset.labels = dataset.texts[: args.limit], dataset.labels[: args.limit]
    _report_data(dataset)
    split = data.stratified_split(
        dataset.labels,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        texts=dataset.texts,
    )
    log(f"split: {split.sizes()} (seed {split.seed})")
    return dataset, split


def load_ood(args: argparse.Namespace) -> dict[str, data.LabelledTexts]:
    """The out-of-domain dev sets of --ood-dir (none when it is not given and the default folder is absent)."""
    folder = args.ood_dir
    if folder is None:
        if not data.DEFAULT_OOD_DIR.is_dir():
            log(f"out-of-domain sets: none ({data.DEFAULT_OOD_DIR} does not exist)")
            return {}
        folder = data.DEFAULT_OOD_DIR
    sets = data.load_ood_sets(folder)
    log(f"out-of-domain sets: {', '.join(f'{name} ({len(s.texts)})' for name, s in sets.items())}")
    return sets


def connect(args: argparse.Namespace) -> str | None:
    """Select the tracking store and experiment of add_tracking_arguments; None (reported) if it does not answer."""
    from training import tracking  # imports mlflow (about 2 s): only once the arguments are known to be good

    try:
        uri = tracking.connect(args.tracking_uri, args.experiment)
    except tracking.TrackingError as exc:
        log(f"error: {exc}")
        return None
    log(f"tracking: {uri}")
    return uri


def kept_epoch_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """best_epoch and the validation (and watched out-of-domain) metrics of the epoch whose weights fit returned
    (best_val_accuracy, best_ood_<set>_accuracy, ...)."""
    best = history[-1]["best_epoch"]
    kept = {k: v for k, v in history[best - 1].items() if k.startswith(("val_", OOD_PREFIX))}
    return {"best_epoch": best, **{f"best_{k}": v for k, v in kept.items()}}


def train_and_log(
    args: argparse.Namespace, dataset: data.Dataset, split: data.Split, *, nested: bool = False
) -> dict[str, object]:
    """Everything after the data: one MLflow run (a child of the active one if nested) from featurising to
    registration; its summary."""
    import mlflow

    from training import tracking

    params = hyper_params(args)
    ood = load_ood(args)
    with mlflow.start_run(run_name=args.run_name, nested=nested) as active:
        run_id = active.info.run_id
        given_tags = run_tags(args, dataset)
        commit = None if "mlflow.source.git.commit" in given_tags else tracking.git_commit()
        if commit is not None:
            mlflow.set_tags({"mlflow.source.git.commit": commit[0], "git_dirty": str(commit[1]).lower()})
        if given_tags:
            mlflow.set_tags(given_tags)
        mlflow.log_params(
            {
                **dataclasses.asdict(params),
                "label_rule": dataset.label_rule.describe(),
                "threshold": args.threshold,
                "val_fraction": args.val_fraction,
                "test_fraction": args.test_fraction,
                "limit": args.limit,
                "contractions": args.contractions,
                "tense_copies": args.tense_copies,
                "training_data_sha256": dataset.sha256,
                "sources": ",".join(r.uri for r in dataset.reports)[:6000],
            }
        )
        tracking.log_lineage(dataset, split)

        log("tokenising with the model's own preprocessing graph ...")
        made = data.training_texts(dataset.texts, split, contractions=args.contractions, tense_copies=args.tense_copies)
        texts, train_indices, source = made.texts, made.train, made.source
        vocabulary, encoded = preprocess.featurize(
            texts,
            train_indices,
            min_count=params.min_count,
            max_size=params.max_features,
            token_pattern=params.token_pattern,
        )
        mlflow.log_param("vocabulary_size", len(vocabulary))
        log(f"vocabulary: {len(vocabulary)} unigrams and bigrams")

        labels = np.asarray(dataset.labels)
        train_sources = data.take(source, train_indices)
        model, history = fit(
            data.take(encoded, train_indices),
            labels[train_sources].tolist(),
            data.take(encoded, split.validation),
            labels[split.validation].tolist(),
            vocab_size=len(vocabulary),
            params=params,
            train_is_review=data.take(data.review_flags(dataset), train_sources),
            train_is_tense_copy=made.train_is_tense_copy(),
            train_is_feedback=data.take(data.feedback_flags(dataset), train_sources),
            threshold=args.threshold,
            on_epoch=lambda epoch, record: log_epoch(mlflow, epoch, record),
            progress=not args.quiet,
        )
        # The shipped weights are the best epoch's: its validation metrics are what the deploy gate reads.
        kept = kept_epoch_metrics(history)
        mlflow.log_metrics(kept)

        _calibrate(
            mlflow, model, data.take(encoded, split.validation), labels[split.validation], args.threshold, tracking
        )
        test_probabilities = _evaluate(mlflow, model, encoded, labels, split, args.threshold, tracking)

        log("exporting to ONNX and checking it against PyTorch on every validation text ...")
        metadata = export.ModelMetadata(
            mlflow_run_id=run_id,
            label_rule=dataset.label_rule.describe(),
            threshold=args.threshold,
            training_data_sha256=dataset.sha256,
        )
        onnx_model = export.build_onnx(model, vocabulary, metadata)
        export.check(onnx_model)
        model_bytes = onnx_model.SerializeToString()
        worst = export.verify_parity(model_bytes, model, vocabulary, data.take(texts, split.validation))
        golden = _golden_outputs(model_bytes, model, vocabulary, args.threshold)
        mlflow.log_metrics(
            {
                "onnx_max_abs_diff_validation": worst,
                "onnx_max_abs_diff_golden": golden["max_abs_diff_onnx"],
                "model_size_bytes": len(model_bytes),
            }
        )
        model_uri = tracking.log_onnx_model(model_bytes, golden)
        log(f"logged {model_uri} ({len(model_bytes) / 1e6:.1f} MB, max |onnx - torch| {worst:.2g})")
        validation_texts = data.take(texts, split.validation)
        reference = _reference(
            model_bytes, validation_texts, labels[split.validation], args.threshold, test_probabilities
        )
        mlflow.log_dict(reference.to_dict(), REFERENCE_ARTIFACT)
        log(
            f"monitoring reference: {reference.predictions} validation texts, positive rate "
            f"{reference.positive_rate:.3f}, unknown-token rate {reference.counts.unknown_token_rate():.3f}"
        )
        _behaviour(mlflow, model_bytes, args.threshold)
        ood_accuracy = _out_of_domain(mlflow, model_bytes, ood, args.threshold)

        judged = None
        if args.challenge:  # before registering: a failure here leaves no version without its verdict
            sets = challenger.evaluation_sets(dataset, split, ood)
            judged = challenger.judge(model_bytes, args.threshold, sets, AutoPromote(args.auto_promote), log=log)
        version = None
        if args.register:
            tags = {
                "mlflow_run_id": run_id,
                "model_sha256": sha256_bytes(model_bytes),
                "test_accuracy": f"{test_probabilities['accuracy']:.4f}",
                "test_roc_auc": f"{test_probabilities['roc_auc']:.4f}",
                "val_accuracy": f"{kept['best_val_accuracy']:.4f}",
                "label_rule": dataset.label_rule.describe(),
                **(judged.version_tags() if judged else {}),
            }
            registered = tracking.register(model_uri, tags)
            version = str(registered.version)
            log(f"registered {MODEL_NAME} version {version}")
        challenger.promote_if_decided(judged, version, log=log)
        if version is not None and args.promote:
            tracking.promote(version)
            log(f"alias 'production' -> {MODEL_NAME} version {version}")

        if args.checkpoint is not None:
            pattern = None if vocabulary.token_pattern == preprocess.TOKEN_PATTERN else vocabulary.token_pattern
            save_checkpoint(model, vocabulary.features, args.checkpoint, pattern)
            log(f"PyTorch checkpoint: {args.checkpoint}")

        if args.output_dir is not None:
            manifest = write_staged_folder(
                args.output_dir,
                model_bytes,
                model_name=MODEL_NAME,
                model_version=version,
                mlflow_run_id=run_id,
                threshold=args.threshold,
                reference=reference.to_dict(),
            )
            log(f"staged folder: {args.output_dir} (sha256 {manifest.sha256[:12]}...)")

    return {
        "run_id": run_id,
        "model_uri": model_uri,
        "model_version": version,
        "test_accuracy": round(test_probabilities["accuracy"], 4),
        "test_roc_auc": round(test_probabilities["roc_auc"], 4),
        "model_size_bytes": len(model_bytes),
        **{name: round(value, 4) for name, value in ood_accuracy.items()},
        **(challenger.summary(judged.decision if judged else None) if args.challenge else {}),
    }


def _report_data(dataset: data.Dataset) -> None:
    for report in dataset.reports:
        log(
            f"data: {report.uri} ({report.format}): {report.lines} lines, {report.used} used, "
            f"{report.malformed} malformed, {report.empty_text} empty, {report.unknown_label} unknown label, "
            f"{report.duplicate} duplicate"
        )
        for example in report.examples_of_rejects:
            log(f"  rejected {example}")
    summary = dataset.summary()
    log(f"data: {len(dataset.texts)} examples ({summary['positive']} positive, {summary['negative']} negative)")


def log_epoch(mlflow, epoch: int, record: dict[str, float]) -> None:
    """One epoch's metrics at step `epoch` (best_epoch, a running marker, is logged once at the end)."""
    mlflow.log_metrics({k: v for k, v in record.items() if k != "best_epoch"}, step=epoch)


def _calibrate(mlflow, model, val_encoded, val_labels: np.ndarray, threshold: float, tracking) -> None:
    """Temperature scaling on validation, folded into the weights when it lowers the calibration error."""
    from training.model import predict_logits, scale_logits

    logits = predict_logits(model, val_encoded)
    fitted = calibration.calibrate(logits, val_labels, threshold)
    if fitted.applied:
        scale_logits(model, 1.0 / fitted.temperature)
    mlflow.log_metrics(
        {
            "calibration_temperature": fitted.temperature,
            "val_expected_calibration_error_uncalibrated": fitted.ece_before,
            "val_expected_calibration_error": fitted.ece_after,
        }
    )
    uncalibrated = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    calibrated = 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / fitted.temperature))
    curves = {"uncalibrated": uncalibrated, f"temperature {fitted.temperature:.2f}": calibrated}
    tracking.log_figure(
        calibration.reliability_figure(curves, val_labels, "validation set", threshold),
        "plots/reliability_validation.png",
    )
    log(
        f"calibration: temperature {fitted.temperature:.3f} "
        f"({'applied' if fitted.applied else 'not applied: it would not help or would move answers'}), validation ECE "
        f"{fitted.ece_before:.4f} -> {fitted.ece_after:.4f}"
    )


def _reference(
    model_bytes: bytes, texts: list[str], labels: np.ndarray, threshold: float, test: dict[str, float]
) -> Reference:
    """Monitoring's reference: the exported graph's own answers on the validation texts, counted as predict
    counts live traffic, with the test set's calibration error (the figure the deploy gate bounds) and the
    model's sha256 (the gate checks the reference is this model's)."""
    session = export.session(model_bytes)
    probabilities = export.onnx_probabilities(session, texts)
    known = export.onnx_known_fractions(session, texts)
    accuracy = float(np.mean((probabilities >= threshold) == (labels == 1)))
    return Reference.of(
        probabilities.tolist(),
        texts,
        known.tolist(),
        threshold,
        accuracy=accuracy,
        expected_calibration_error=test["expected_calibration_error"],
        model_sha256=sha256_bytes(model_bytes),
    )


def _behaviour(mlflow, model_bytes: bytes, threshold: float) -> None:
    """The behavioural suite on the exported graph: its pass rate (the deploy gate's MIN_BEHAVIOUR_PASS_RATE reads
    it), one per capability, and every case as a table."""
    session = export.session(model_bytes)
    report = behaviour.run(lambda texts: export.onnx_probabilities(session, list(texts)), threshold)
    table = report.by_capability()
    mlflow.log_metric(BEHAVIOUR_PASS_RATE_METRIC, report.pass_rate)
    mlflow.log_metrics({f"behaviour_pass_rate/{behaviour.slug(name)}": p / n for name, (p, n) in table.items()})
    mlflow.log_table(report.rows(), "behaviour/cases.json")
    mlflow.log_table(
        {
            "capability": list(table),
            "passed": [p for p, _ in table.values()],
            "cases": [n for _, n in table.values()],
            "pass_rate": [round(p / n, 4) for p, n in table.values()],
        },
        "behaviour/capabilities.json",
    )
    weakest = min(table.items(), key=lambda item: item[1][0] / item[1][1])
    log(
        f"behaviour: {report.pass_rate:.1%} of {len(report.outcomes)} cases pass; weakest: {weakest[0]} "
        f"{weakest[1][0]}/{weakest[1][1]}"
    )


def _out_of_domain(
    mlflow, model_bytes: bytes, sets: dict[str, data.LabelledTexts], threshold: float
) -> dict[str, float]:
    """Accuracy of the exported model on each out-of-domain dev set, logged as ood_<set>_accuracy."""
    session = export.session(model_bytes)
    accuracy = {
        f"{OOD_PREFIX}{name}_accuracy": float(
            np.mean((export.onnx_probabilities(session, s.texts) >= threshold) == np.asarray(s.labels))
        )
        for name, s in sets.items()
    }
    if accuracy:
        mlflow.log_metrics(accuracy)
        log("out-of-domain accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    return accuracy


def _evaluate(mlflow, model, encoded, labels, split, threshold: float, tracking) -> dict[str, float]:
    from training.model import predict_proba

    results = {}
    for part in ("validation", "test"):
        indices = getattr(split, part)
        probabilities = predict_proba(model, data.take(encoded, indices))
        truth = labels[indices]
        metrics = evaluate.binary_metrics(truth, probabilities, threshold)
        metrics["expected_calibration_error"] = calibration.expected_calibration_error(probabilities, truth, threshold)
        if part == "test":
            mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
            results = metrics
        tracking.log_figure(
            evaluate.confusion_figure(truth, probabilities, threshold, f"{part} set"), f"plots/confusion_{part}.png"
        )
        tracking.log_figure(evaluate.curves_figure(truth, probabilities, f"{part} set"), f"plots/roc_pr_{part}.png")
    log(f"test: accuracy {results['accuracy']:.4f}, ROC AUC {results['roc_auc']:.4f}")
    return results


def _golden_outputs(model_bytes: bytes, model, vocabulary, threshold: float) -> dict:
    texts = list(GOLDEN_TEXTS)
    torch_p = export.torch_probabilities(model, vocabulary, texts)
    onnx_p = export.onnx_probabilities(export.session(model_bytes), texts)
    return {
        "texts": texts,
        "probabilities": [float(p) for p in torch_p],
        "source": "pytorch",
        "tolerance": 1e-4,
        "threshold": threshold,
        "max_abs_diff_onnx": float(np.abs(torch_p - onnx_p).max()),
    }


if __name__ == "__main__":
    sys.exit(main())
