"""Ours against TF-IDF (1-2 grams) + logistic regression, trained in the same run on the same split, scored on the
in-domain test split and on every out-of-domain dev set.

    .venv/bin/python bench/train_vs_baseline.py [--data PATH ...] [--ood DIR] [--limit N] [--no-baseline]
        [--contractions as-given|joined|both] [--embedding-dim N --epochs N ... --weight-decay X
         --label-smoothing X --feature-dropout X --review-weight X --idf-weighting --balance-classes]
        (every training.fit.HyperParams field; defaults are training.train's)

Prints each model's accuracy on the test split and on each `label<TAB>text` file of --ood (1 = positive; dev
sets for choosing and tuning, never trained on), training time, model size, the probability ours gives a
short past-tense compliment, and a last line `result: {...}` (JSON) to collect runs into a table.
Ours is timed from tokens to the exported ONNX file (what `training.train` does minus MLflow), temperature
scaling on validation included as training.train applies it; the baseline from raw texts to a fitted
scikit-learn pipeline, sized as the pickle it would need.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from training import calibration, data, export, preprocess
from training.fit import HyperParams, fit
from training.model import predict_logits, scale_logits

DEFAULT_OOD = data.REPO_ROOT.parent / "shared" / "data" / "ood"
PAST_TENSE_PRAISE = "The staff were friendly."
MAX_MODEL_BYTES = 50 * 1024 * 1024


def load_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts and labels of a `label<TAB>text` file with a header row."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    body = [row for row in rows[1:] if len(row) == 2]
    return [text for _, text in body], np.array([int(label) for label, _ in body])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", help="as training.train --data (default: ../shared/data/yelp)")
    parser.add_argument("--ood", type=Path, default=DEFAULT_OOD, help="folder of out-of-domain .tsv dev sets")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples (screening)")
    parser.add_argument("--no-baseline", action="store_true", help="train and score ours only")
    parser.add_argument("--baseline-c", type=float, default=4.0, help="inverse regularisation of the baseline")
    parser.add_argument("--name", default="ours", help="row name in the output")
    parser.add_argument("--save-model", type=Path, default=None, help="also write our model.onnx here")
    parser.add_argument(
        "--contractions", choices=data.CONTRACTIONS, default="as-given", help="as training.train (ours only)"
    )
    group = parser.add_argument_group("our model (training.fit.HyperParams)")
    for field in dataclasses.fields(HyperParams):
        option = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(option, action=argparse.BooleanOptionalAction, default=field.default, help=" ")
        else:
            group.add_argument(option, type=type(field.default), default=field.default, help=" ")
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
    for path in sorted(args.ood.glob("*.tsv")):
        sets[path.stem] = load_tsv(path)
    print(f"data: {len(dataset.texts)} examples, split {split.sizes()}; {params}", flush=True)

    started = time.perf_counter()
    texts, train_indices, source = data.with_contractions(dataset.texts, split, args.contractions)
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
        pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LogisticRegression(C=args.baseline_c, max_iter=1000),
        )
        pipeline.fit(data.take(dataset.texts, split.train), labels[split.train])
        baseline_seconds = time.perf_counter() - started
        baseline = {name: float(np.mean(pipeline.predict(t) == y)) for name, (t, y) in sets.items()}
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
