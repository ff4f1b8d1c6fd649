import numpy as np
import pytest
import torch

from training import preprocess
from training.fit import HyperParams, average, drop_features, example_weights, fit, smooth_targets
from training.model import FastTextClassifier, idf_weights, pack, predict_logits, predict_proba

POSITIVE = ["great food", "lovely staff", "great service", "lovely place great food", "amazing"]
NEGATIVE = ["awful food", "rude staff", "awful service", "rude people awful place", "horrible"]

# Toy runs start from a neutral model, not the shipped defaults: one model, every lever off, each review a sentence.
NEUTRAL = {
    "ensemble": 1,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "feature_dropout": 0.0,
    "review_weight": 1.0,
    "tense_copy_weight": 1.0,
    "balance_classes": False,
}


def toy(**options) -> HyperParams:
    return HyperParams(**{**NEUTRAL, **options})


def _encoded() -> tuple[preprocess.Vocabulary, list[list[int]], list[int]]:
    texts = (POSITIVE + NEGATIVE) * 20
    labels = ([1] * len(POSITIVE) + [0] * len(NEGATIVE)) * 20
    tokens = preprocess.tokenize(texts)
    vocabulary = preprocess.Vocabulary.build(tokens, min_count=1, max_size=1000)
    return vocabulary, vocabulary.encode(tokens), labels


def test_fit_learns_a_separable_toy_problem_and_reports_each_epoch() -> None:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=3, batch_size=8, learning_rate=0.05)

    model, history = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)

    assert len(history) == 3
    assert {"train_loss", "train_accuracy", "val_accuracy", "val_roc_auc", "best_epoch"} <= history[0].keys()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    probabilities = predict_proba(model, vocabulary.encode(preprocess.tokenize(["great", "awful"])))
    assert probabilities[0] > 0.5 > probabilities[1]


def test_fit_same_seed_same_weights_other_seed_other_weights() -> None:
    vocabulary, ids, labels = _encoded()

    def weights(seed: int) -> np.ndarray:
        params = toy(embedding_dim=8, epochs=2, batch_size=8, seed=seed)
        model, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)
        return model.embedding.weight.detach().numpy().copy()

    first = weights(1)

    np.testing.assert_array_equal(first, weights(1))
    assert not np.array_equal(first, weights(2))


# Measured with the code before the out-of-domain levers existed (same venv), at that code's defaults (learning
# rate 0.004, decay 0.7, one model): with every lever off, training must not move them.
BEFORE_LEVERS_TRAIN_LOSS = [0.6875647044181824, 0.6530312705039978]
BEFORE_LEVERS_EMBEDDING_SUM = 0.3776895999908447


def _tiny_fit(**options) -> tuple[np.ndarray, list[dict[str, float]], list[list[int]]]:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=2, batch_size=8, **options)
    is_review = [i % 3 == 0 for i in range(len(ids))]
    model, history = fit(
        ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, train_is_review=is_review, progress=False
    )
    return model.embedding.weight.detach().numpy().copy(), history, ids


LEVERS_OFF = {
    "learning_rate": 0.004,
    "lr_decay": 0.7,
    "ensemble": 1,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "feature_dropout": 0.0,
    "review_weight": 1.0,
    "idf_weighting": False,
    "balance_classes": False,
}


@pytest.mark.unit
def test_fit_levers_off_reproduce_the_training_before_they_existed() -> None:
    weights, history, _ = _tiny_fit(**LEVERS_OFF)

    assert [record["train_loss"] for record in history] == pytest.approx(BEFORE_LEVERS_TRAIN_LOSS, abs=1e-7)
    assert float(weights.sum()) == pytest.approx(BEFORE_LEVERS_EMBEDDING_SUM, abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize(
    "option",
    [
        {"weight_decay": 0.5},
        {"label_smoothing": 0.2},
        {"feature_dropout": 0.3},
        {"review_weight": 3.0},
        {"idf_weighting": True},
    ],
)
def test_fit_each_lever_changes_the_weights_and_is_reproducible(option: dict[str, float]) -> None:
    # balance_classes is left out: this toy set is balanced already (test_example_weights_... covers it).
    default = _tiny_fit()[0]

    changed = _tiny_fit(**option)[0]

    assert not np.array_equal(default, changed)
    np.testing.assert_array_equal(changed, _tiny_fit(**option)[0])


@pytest.mark.unit
@pytest.mark.parametrize(("smoothing", "expected"), [(0.0, [0.0, 1.0]), (0.2, [0.1, 0.9]), (0.5, [0.25, 0.75])])
def test_smooth_targets_moves_both_labels_towards_one_half(smoothing: float, expected: list[float]) -> None:
    targets = smooth_targets(torch.tensor([0.0, 1.0]), smoothing)

    assert targets.tolist() == pytest.approx(expected)


@pytest.mark.unit
def test_fit_label_smoothing_bounds_the_logits() -> None:
    vocabulary, ids, labels = _encoded()

    def largest_logit(smoothing: float) -> float:
        params = toy(embedding_dim=8, epochs=1, batch_size=8, learning_rate=0.1, label_smoothing=smoothing)
        model, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)
        return float(np.abs(predict_logits(model, ids)).max())

    # The loss with targets 0.25 / 0.75 is least at |logit| = log(3) = 1.1; without smoothing it keeps growing.
    assert largest_logit(0.5) < 1.5 < largest_logit(0.0)


@pytest.mark.unit
def test_drop_features_keeps_each_id_with_probability_one_minus_rate() -> None:
    batch = [list(range(1, 1001)), list(range(1, 1001))]

    kept = drop_features(batch, 0.3, torch.Generator().manual_seed(0))

    assert all(set(ids) <= set(range(1, 1001)) for ids in kept)
    assert sum(map(len, kept)) / 2000 == pytest.approx(0.7, abs=0.03)
    assert kept[0] != kept[1]  # independent per text
    assert drop_features(batch, 0.0, torch.Generator().manual_seed(0)) == batch


@pytest.mark.unit
def test_fit_weight_decay_shrinks_the_embeddings() -> None:
    default = _tiny_fit()[0]

    decayed = _tiny_fit(weight_decay=5.0)[0]

    assert np.linalg.norm(decayed) < np.linalg.norm(default)


@pytest.mark.unit
def test_fit_review_weight_needs_to_know_which_texts_are_reviews() -> None:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=1, batch_size=8, review_weight=2.0)

    with pytest.raises(ValueError, match="train_is_review"):
        fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)


@pytest.mark.unit
def test_fit_review_weight_one_ignores_the_review_flags() -> None:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=2, batch_size=8)

    model, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)

    np.testing.assert_array_equal(model.embedding.weight.detach().numpy(), _tiny_fit()[0])


@pytest.mark.unit
@pytest.mark.parametrize(
    "option",
    [{"weight_decay": -1.0}, {"label_smoothing": 1.0}, {"feature_dropout": 1.0}, {"review_weight": 0.0}],
)
def test_hyper_params_out_of_range_lever_raises(option: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(option))):
        HyperParams(**option)


@pytest.mark.unit
def test_idf_weights_follow_scikit_learns_smoothed_idf() -> None:
    weights = idf_weights([[1, 1, 2], [1], [3]], vocab_size=4)

    expected = [0.0, np.log(4 / 3) + 1, np.log(4 / 2) + 1, np.log(4 / 2) + 1, np.log(4 / 1) + 1]
    assert weights.tolist() == pytest.approx(expected)


@pytest.mark.unit
def test_weighted_bag_is_the_weighted_mean_of_known_features() -> None:
    weights = torch.tensor([0.0, 1.0, 3.0])
    model = FastTextClassifier(2, 1, weights)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.tensor([[0.0], [2.0], [6.0]]))
        model.linear.weight.fill_(1.0)

    logits = model(*pack([[1, 2], [2, 0], [], [1]]))

    # (1*2 + 3*6) / 4 = 5; unknown id 0 weighs nothing; an empty bag gives 0; one feature alone is itself.
    assert logits.tolist() == pytest.approx([5.0, 6.0, 0.0, 2.0])


@pytest.mark.unit
def test_fit_idf_weighting_stores_the_weights_and_changes_training() -> None:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=2, batch_size=8, idf_weighting=True)

    model, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)

    assert model.feature_weights is not None
    assert model.feature_weights.tolist() == pytest.approx(idf_weights(ids, len(vocabulary)).tolist())
    assert not np.array_equal(model.embedding.weight.detach().numpy(), _tiny_fit()[0])


@pytest.mark.unit
def test_example_weights_balance_classes_and_up_weight_reviews() -> None:
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0])
    is_review = [True, False, False, False]

    assert example_weights(labels, is_review, toy(balance_classes=False)) is None
    up_weighted = example_weights(labels, is_review, toy(review_weight=2.0, balance_classes=False))
    assert up_weighted.tolist() == [2.0, 1.0, 1.0, 1.0]
    balanced = example_weights(labels, is_review, toy(balance_classes=True))
    assert balanced.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    both = example_weights(labels, is_review, toy(review_weight=2.0, balance_classes=True))
    assert both.tolist() == pytest.approx([1.25, 0.625, 0.625, 2.5])


@pytest.mark.unit
def test_fit_watch_sets_add_their_accuracy_per_epoch_and_never_change_the_training() -> None:
    vocabulary, ids, labels = _encoded()
    params = toy(embedding_dim=8, epochs=2, batch_size=8)
    flipped = [1 - y for y in labels]

    model, history = fit(
        ids,
        labels,
        ids,
        labels,
        vocab_size=len(vocabulary),
        params=params,
        watch={"ood_same": (ids, labels), "ood_flipped": (ids, flipped)},
        progress=False,
    )

    for record in history:
        assert record["ood_same_accuracy"] == pytest.approx(record["val_accuracy"])
        assert record["ood_flipped_accuracy"] == pytest.approx(1.0 - record["val_accuracy"])
    unwatched, _ = fit(ids, labels, ids, labels, vocab_size=len(vocabulary), params=params, progress=False)
    np.testing.assert_array_equal(model.embedding.weight.detach().numpy(), unwatched.embedding.weight.detach().numpy())


@pytest.mark.unit
def test_example_weights_tense_copy_weight_scales_the_copies_before_balancing() -> None:
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0])
    is_copy = [False, True, False, False]

    unbalanced = toy(tense_copy_weight=0.5, balance_classes=False)
    assert example_weights(labels, None, unbalanced, is_copy).tolist() == [1.0, 0.5, 1.0, 1.0]
    assert example_weights(labels, None, unbalanced, [False] * 4) is None  # no copy: the unweighted loss
    balanced = example_weights(labels, None, toy(tense_copy_weight=0.5, balance_classes=True), is_copy)
    # 3.5 in all: each class gets 1.75; copy weighed before balancing (after, it would be [2/3, 1/3, 2/3, 2]).
    assert balanced.tolist() == pytest.approx([0.7, 0.35, 0.7, 1.75])


@pytest.mark.unit
def test_average_answers_the_mean_of_the_members_logits() -> None:
    vocabulary, ids, labels = _encoded()
    members = [
        fit(
            ids,
            labels,
            ids,
            labels,
            vocab_size=len(vocabulary),
            params=toy(embedding_dim=4, epochs=1, seed=s),
            progress=False,
        )[0]
        for s in (1, 2, 3)
    ]

    combined = average(members)

    expected = np.mean([predict_logits(m, ids) for m in members], axis=0)
    np.testing.assert_allclose(predict_logits(combined, ids), expected, rtol=1e-5, atol=1e-6)
    assert combined.embedding.embedding_dim == 12


@pytest.mark.unit
def test_fit_ensemble_of_one_is_the_single_model_and_of_three_is_an_average_of_other_seeds() -> None:
    single = _tiny_fit()[0]

    assert single.shape[1] == 8
    three = _tiny_fit(ensemble=3)[0]
    assert three.shape[1] == 24
    np.testing.assert_array_equal(three[:, :8], single)  # member 0 is seeded as the single model
    assert not np.array_equal(three[:, 8:16], single)
    np.testing.assert_array_equal(three, _tiny_fit(ensemble=3)[0])


def test_example_weights_feedback_weight_multiplies_feedback_examples_only() -> None:
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    params = HyperParams(review_weight=1.0, tense_copy_weight=1.0, balance_classes=False, feedback_weight=3.0)

    weights = example_weights(labels, [False] * 4, params, None, [True, False, False, True])

    assert weights.tolist() == [3.0, 1.0, 1.0, 3.0]
    assert example_weights(labels, [False] * 4, params, None, [False] * 4) is None
    assert example_weights(labels, [False] * 4, params) is None


def test_hyper_params_feedback_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="feedback_weight"):
        HyperParams(feedback_weight=0.0)
