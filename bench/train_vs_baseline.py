"""Ours against TF-IDF (1-2 grams) + logistic regression, trained in the same run on the same split.

    .venv/bin/python bench/train_vs_baseline.py [--data PATH ...] [--seed N]

Prints each model's test accuracy, training time and model size, and ours/baseline ratios.
Ours is timed from tokens to the exported ONNX file (what `training.train` does minus MLflow);
the baseline from raw texts to a fitted scikit-learn pipeline, sized as the pickle it would need.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from training import data, export, preprocess
from training.fit import HyperParams, fit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", help="as training.train --data (default: ../shared/data/yelp)")
    parser.add_argument("--seed", type=int, default=HyperParams().seed)
    args = parser.parse_args()

    dataset = data.load_dataset(args.data)
    split = data.stratified_split(
        dataset.labels, val_fraction=0.1, test_fraction=0.1, seed=args.seed, texts=dataset.texts
    )
    labels = np.asarray(dataset.labels)
    test_texts = data.take(dataset.texts, split.test)
    print(f"data: {len(dataset.texts)} examples, split {split.sizes()}", flush=True)

    params = HyperParams(seed=args.seed)
    started = time.perf_counter()
    vocabulary, encoded = preprocess.featurize(
        dataset.texts, split.train, min_count=params.min_count, max_size=params.max_features
    )
    model, _ = fit(
        data.take(encoded, split.train),
        labels[split.train].tolist(),
        data.take(encoded, split.validation),
        labels[split.validation].tolist(),
        vocab_size=len(vocabulary),
        params=params,
        progress=False,
    )
    metadata = export.ModelMetadata("bench", dataset.label_rule.describe(), 0.5, dataset.sha256)
    model_bytes = export.build_onnx(model, vocabulary, metadata).SerializeToString()
    ours_seconds = time.perf_counter() - started
    ours_probabilities = export.onnx_probabilities(export.session(model_bytes), test_texts)
    ours_accuracy = float(np.mean((ours_probabilities >= 0.5) == labels[split.test]))

    started = time.perf_counter()
    baseline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=1000),
    )
    baseline.fit(data.take(dataset.texts, split.train), labels[split.train])
    baseline_seconds = time.perf_counter() - started
    baseline_accuracy = float(np.mean(baseline.predict(test_texts) == labels[split.test]))
    baseline_bytes = len(pickle.dumps(baseline))

    rows = [
        ("ours (fastText-style, ONNX)", ours_accuracy, ours_seconds, len(model_bytes)),
        ("baseline (TF-IDF 1-2 + LR)", baseline_accuracy, baseline_seconds, baseline_bytes),
    ]
    print(f"\n{'model':<30} {'test accuracy':>13} {'train s':>8} {'size MB':>8}")
    for name, accuracy, seconds, size in rows:
        print(f"{name:<30} {accuracy:>13.4f} {seconds:>8.1f} {size / 1e6:>8.1f}")
    print(
        f"\nours/baseline: accuracy {ours_accuracy / baseline_accuracy:.4f}, "
        f"training time {ours_seconds / baseline_seconds:.2f}, size {len(model_bytes) / baseline_bytes:.2f}"
    )
    ok = ours_accuracy >= baseline_accuracy and len(model_bytes) <= 50 * 1024 * 1024
    print("target (accuracy >= baseline, model.onnx <= 50 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
