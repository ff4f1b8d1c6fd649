"""Ours against TF-IDF (1-2 grams) + logistic regression, trained in the same run on the same split, scored on the
in-domain test split and on every out-of-domain dev set.

    .venv/bin/python bench/train_vs_baseline.py [--data PATH ...] [--ood DIR] [--limit N] [--no-baseline]
        [--check] [--contractions MODE] [--embedding-dim N --epochs N ... --weight-decay X
         --label-smoothing X --feature-dropout X --review-weight X --[no-]idf-weighting --[no-]balance-classes]
        (every training.fit.HyperParams field; defaults are training.train's)

Prints each model's accuracy on the test split and on each `label<TAB>text` file of --ood (1 = positive; dev
sets for choosing and tuning, never trained on), training time, model size, the probability ours gives a
short past-tense compliment, and a last line `result: {...}` (JSON) to collect runs into a table.
Ours is timed from tokens to the exported ONNX file (what `training.train` does minus MLflow), temperature
scaling on validation included as training.train applies it; the baseline from raw texts to a fitted
scikit-learn pipeline, sized as the pickle it would need. Exits 0 after measuring (so `make bench` runs every
bench); with --check, 1 unless ours is at least the baseline on every set and within 50 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from training import baseline as reference
from training import calibration, data, export, preprocess
from training.fit import HyperParams, fit
from training.model import predict_logits, scale_logits
from training.train import DEFAULT_CONTRACTIONS, DEFAULT_TENSE_COPIES

PAST_TENSE_PRAISE = "The staff were friendly."
MAX_MODEL_BYTES = 50 * 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", help="as training.train --data (default: ../shared/data/yelp)")
    parser.add_argument("--ood", type=Path, default=data.DEFAULT_OOD_DIR, help="folder of out-of-domain .tsv dev sets")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless ours is at least the baseline everywhere and <= 50 MB"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples (screening)")
    parser.add_argument("--no-baseline", action="store_true", help="train and score ours only")
    parser.add_argument("--baseline-c", type=float, default=reference.C, help="inverse regularisation of the baseline")
    parser.add_argument("--name", default="ours", help="row name in the output")
    parser.add_argument("--save-model", type=Path, default=None, help="also write our model.onnx here")
    parser.add_argument(
        "--contractions",
        choices=data.CONTRACTIONS,
        default=DEFAULT_CONTRACTIONS,
        help="as training.train (ours only)",
    )
    parser.add_argument(
        "--tense-copies", choices=data.TENSE_COPIES, default=DEFAULT_TENSE_COPIES, help="as training.train (ours only)"
    )
    group = parser.add_argument_group("our model (training.fit.HyperParams)")
    for field in dataclasses.fields(HyperParams):
        option = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(
                option, action=argparse.BooleanOptionalAction, default=field.default, help=f"as training.train {option}"
            )
        else:
            group.add_argument(
                option, type=type(field.default), default=field.default, help=f"as training.train {option}"
            )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    params = HyperParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HyperParams)})
    dataset = data.load_dataset(args.data)
    if args.limit is not None:
        dataset.texts, dataset.labels = dataset.texts[: args.limit], dataset.labels[: args.limit]
    split = data.stratified_split(
        dataset.labels, val_fraction=0.1, test_fraction=0.1, seed=params.seed, texts=dataset.texts
    )
    labels = np.asarray(dataset.labels)
    sets = {"test": (data.take(dataset.texts, split.test), labels[split.test])}
    if args.ood.is_dir() or args.ood != data.DEFAULT_OOD_DIR:  # a folder given explicitly must exist
        for name, ood in data.load_ood_sets(args.ood).items():
            sets[name] = (ood.texts, np.asarray(ood.labels))
    else:
        print(f"no out-of-domain sets: {args.ood} does not exist; the test split alone", flush=True)
    print(f"data: {len(dataset.texts)} examples, split {split.sizes()}; {params}", flush=True)

    started = time.perf_counter()
    made = data.training_texts(dataset.texts, split, contractions=args.contractions, tense_copies=args.tense_copies)
    texts, train_indices, source = made.texts, made.train, made.source
    vocabulary, encoded = preprocess.featurize(
        texts,
        train_indices,
        min_count=params.min_count,
        max_size=params.max_features,
        token_pattern=params.token_pattern,
    )
    train_labels = data.take(labels, data.take(source, train_indices))
    val_encoded = data.take(encoded, split.validation)
    model, history = fit(
        data.take(encoded, train_indices),
        [int(y) for y in train_labels],
        val_encoded,
        labels[split.validation].tolist(),
        vocab_size=len(vocabulary),
        params=params,
        train_is_review=data.take(data.review_flags(dataset), data.take(source, train_indices)),
        train_is_tense_copy=made.train_is_tense_copy(),
        progress=False,
    )
    fitted = calibration.calibrate(predict_logits(model, val_encoded), labels[split.validation], 0.5)
    if fitted.applied:
        scale_logits(model, 1.0 / fitted.temperature)
    metadata = export.ModelMetadata("bench", dataset.label_rule.describe(), 0.5, dataset.sha256)
    model_bytes = export.build_onnx(model, vocabulary, metadata).SerializeToString()
    ours_seconds = time.perf_counter() - started
    if args.save_model is not None:
        args.save_model.write_bytes(model_bytes)
    session = export.session(model_bytes)
    predicted = {name: export.onnx_probabilities(session, t) >= 0.5 for name, (t, _) in sets.items()}
    ours = {name: float(np.mean(predicted[name] == y)) for name, (_, y) in sets.items()}
    past_tense = float(export.onnx_probabilities(session, [PAST_TENSE_PRAISE])[0])
    rows = [(args.name, ours, ours_seconds, len(model_bytes))]

    baseline = None
    if not args.no_baseline:
        started = time.perf_counter()
        pipeline = reference.fit_baseline(data.take(dataset.texts, split.train), labels[split.train], args.baseline_c)
        baseline_seconds = time.perf_counter() - started
        baseline = {name: reference.accuracy(pipeline, t, y) for name, (t, y) in sets.items()}
        name = f"baseline (TF-IDF 1-2 + LR C={args.baseline_c:g})"
        rows.append((name, baseline, baseline_seconds, len(pickle.dumps(pipeline))))

    print(f"\n{'model':<34} " + " ".join(f"{name[:22]:>22}" for name in sets) + f" {'train s':>8} {'size MB':>8}")
    for name, accuracy, seconds, size in rows:
        cells = " ".join(f"{accuracy[s]:>22.4f}" for s in sets)
        print(f"{name:<34} {cells} {seconds:>8.1f} {size / 1e6:>8.1f}")
    print(f"\nours: best epoch {history[-1]['best_epoch']}, P(positive | {PAST_TENSE_PRAISE!r}) = {past_tense:.3f}")
    ok = len(model_bytes) <= MAX_MODEL_BYTES
    if baseline is not None:
        ok = ok and all(ours[s] >= baseline[s] for s in sets)
        print("target (accuracy >= baseline on every set, model.onnx <= 50 MB):", "met" if ok else "NOT met")
    result = {
        "name": args.name,
        "params": dataclasses.asdict(params),
        "limit": args.limit,
        "contractions": args.contractions,
        "tense_copies": args.tense_copies,
        "accuracy": ours,
        "baseline_accuracy": baseline,
        "seconds": round(ours_seconds, 1),
        "model_bytes": len(model_bytes),
        "past_tense_praise": round(past_tense, 4),
        "positive_rate": {name: round(float(p.mean()), 4) for name, p in predicted.items()},
        "best_epoch": history[-1]["best_epoch"],
        "temperature": round(fitted.temperature, 3) if fitted.applied else 1.0,
    }
    print("result: " + json.dumps(result), flush=True)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
