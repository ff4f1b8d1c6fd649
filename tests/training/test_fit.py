import numpy as np

from training import preprocess
from training.fit import HyperParams, fit
from training.model import predict_proba

POSITIVE = ["great food", "lovely staff", "great service", "lovely place great food", "amazing"]
NEGATIVE = ["awful food", "rude staff", "awful service", "rude people awful place", "horrible"]


def _encoded() -> tuple[preprocess.Vocabulary, list[list[int]], list[int]]:
    texts = (POSITIVE + NEGATIVE) * 20
    labels = ([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * 20
    tokens = preprocess.tokenize(texts)
    vocabulary = preprocess.Vocabulary.build(tokens, min_count=1, max_size=1000)
    return vocabulary, vocabulary.encode(tokens), labels


def test_fit_learns_a_separable_toy_problem_and_reports_each_epoch() -> None:
    vocabulary, ids, labels = _encoded()
    params = HyperParams(embedding_dim=8, epochs=3, batch_size=8, learning_rate=0.05)

    model, history = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)

    assert len(history) == 3
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_roc_auc", "best_epoch"} <= history[0].keys()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    probabilities = predict_proba(model, vocabulary.encode(preprocess.tokenize(["great", "awful"])))
    assert probabilities[0] > 0.5 > probabilities[1]


def test_fit_same_seed_same_weights_other_seed_other_weights() -> None:
    vocabulary, ids, labels = _encoded()

    def weights(seed: int) -> np.ndarray:
        params = HyperParams(embedding_dim=8, epochs=2, batch_size=8, seed=seed)
        model, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)
        return model.embedding.weight.detach().numpy().copy()

    first = weights(1)

    np.testing.assert_array_equal(first, weights(1))
    assert not np.array_equal(first, weights(2))
