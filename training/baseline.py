"""The reference a default model must match or beat: TF-IDF (1-2 grams, sublinear tf, min_df 2) + logistic
regression (C = 4), trained on the same training split. bench/train_vs_baseline.py reports against it and
training.tune constrains its search to trials at least as accurate on validation and every out-of-domain set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

C = 4.0


def fit_baseline(texts: Sequence[str], labels: Sequence[int], c: float = C) -> Pipeline:
    """The fitted pipeline (raw texts in; scikit-learn's own lower-casing and tokenising)."""
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=c, max_iter=1000),
    )
    return pipeline.fit(list(texts), np.asarray(labels))


def accuracy(pipeline: Pipeline, texts: Sequence[str], labels: Sequence[int]) -> float:
    """The share of texts the pipeline labels as given (threshold 0.5)."""
    return float(np.mean(pipeline.predict(list(texts)) == np.asarray(labels)))
