"""predict's explanations: the exported graph's additive terms, exact (bias + every contribution = the logit),
the largest ten first; a real exported graph served by predict_model.Model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sentiment_core.contract import EXPLANATION_OUTPUTS, OUTPUT_NAME
from sentiment_core.manifest import Manifest
from sentiment_core.onnx_model import run_outputs
from tests.functions.conftest import load_function_module
from training import export, preprocess
from training.model import FastTextClassifier

predict_model = load_function_module("predict", "predict_model")

METADATA = export.ModelMetadata(mlflow_run_id="run1", label_rule="stars>=3", threshold=0.5, training_data_sha256="0")
WORDS = ["great", "food", "friendly", "staff", "terrible", "service", "good", "cold", "not", "bad", "café", "zzz"]


def _model(
    vocabulary: preprocess.Vocabulary, seed: int = 0, scale: float = 0.4, feature_weights: torch.Tensor | None = None
) -> bytes:
    """A random model of moderate logits (|logit| < ~6), so float32 probabilities keep the logit to 1e-5."""
    torch.manual_seed(seed)
    model = FastTextClassifier(len(vocabulary), 8, feature_weights)
    with torch.no_grad():
        model.embedding.weight.normal_(std=scale)
        model.embedding.weight[0].zero_()
        model.linear.weight.normal_(std=scale)
        model.linear.bias.fill_(0.25)
    return export.build_onnx(model.eval(), vocabulary, METADATA).SerializeToString()


def _served(model_bytes: bytes):
    manifest = Manifest("yelp-sentiment", "1", "run1", "0" * 64, 0.5, "2026-01-01T00:00:00Z")
    return predict_model.Model(manifest, model_bytes)


@pytest.fixture(scope="module")
def vocabulary() -> preprocess.Vocabulary:
    corpus = [" ".join(random.Random(i).choices(WORDS[:-1], k=8)) for i in range(200)]
    return preprocess.Vocabulary.build(preprocess.tokenize(corpus), min_count=1, max_size=60)


@pytest.fixture(scope="module")
def served(vocabulary):
    return _served(_model(vocabulary))


def _logit(probability: np.ndarray) -> np.ndarray:
    p = probability.astype(np.float64)
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def served_idf(vocabulary):
    """A model trained with --idf-weighting: a weighted mean, feature_known carrying each feature's weight."""
    weights = torch.cat([torch.zeros(1), 1.0 + torch.rand(len(vocabulary), generator=torch.Generator().manual_seed(5))])
    return _served(_model(vocabulary, seed=1, feature_weights=weights))


@pytest.mark.parametrize("model", ["served", "served_idf"])
def test_explanation_bias_plus_every_contribution_is_the_logit_on_many_texts(model: str, request) -> None:
    served = request.getfixturevalue(model)
    rng = random.Random(7)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(300)]
    texts += ["", "!!!", "GREAT Food, great STAFF!", "zzz zzz", "good " * 300, "not bad\tnot\nbad"]

    for start in range(0, len(texts), 50):  # batches: padding must not change any text's terms
        batch = texts[start : start + 50]
        probability, tokens, scores, known, bias = run_outputs(
            served._session, [OUTPUT_NAME, *EXPLANATION_OUTPUTS], batch
        )
        for i in range(len(batch)):
            everything = predict_model.contributions(tokens[i].tolist(), scores[i], known[i])
            total = float(bias[0]) + sum(everything.values())
            assert total == pytest.approx(_logit(probability[i : i + 1])[0], abs=1e-4), batch[i]


def test_explain_answers_the_same_probabilities_as_infer_and_at_most_ten_terms_largest_first(served) -> None:
    texts = ["great food friendly staff terrible service good cold not bad café and more great food", "bad"]

    probability, known, explanations = served.explain(texts)
    plain, plain_known = served.infer(texts)

    np.testing.assert_array_equal(probability, plain)
    np.testing.assert_array_equal(known, plain_known)
    first = explanations[0]
    weights = [abs(weight) for _, weight in first.terms]
    assert len(first.terms) == predict_model.TOP_TERMS
    assert weights == sorted(weights, reverse=True)
    _, tokens, scores, known_features, _ = run_outputs(served._session, [OUTPUT_NAME, *EXPLANATION_OUTPUTS], texts[:1])
    every = predict_model.contributions(tokens[0].tolist(), scores[0], known_features[0])
    assert len(every) > predict_model.TOP_TERMS
    assert min(weights) >= max(abs(w) for term, w in every.items() if term not in dict(first.terms))
    assert first.to_api()["terms"][0] == {"term": first.terms[0][0], "weight": first.terms[0][1]}


def test_explain_sums_a_repeated_term_and_names_bigrams_by_their_two_tokens() -> None:
    vocabulary = preprocess.Vocabulary(features=("great", "food", "great food"))
    model = _served(_model(vocabulary, seed=3, scale=1.0))
    (_, _, (alone, tripled, mixed)) = model.explain(["great", "Great great GREAT!", "great food great"])
    score = dict(alone.terms)["great"]  # alone: one known feature, divisor 1

    assert [term for term, _ in alone.terms] == ["great"]
    assert dict(tripled.terms) == pytest.approx({"great": score})  # 3 x score / 3: "great great" is unknown
    weights = dict(mixed.terms)
    assert set(weights) == {"great", "food", "great food"}  # "food great" is not a feature: left out
    assert weights["great"] == pytest.approx(2 * score / 4)  # great, food, great, "great food": divisor 4


@pytest.mark.parametrize("text", ["", "   ", "?!", "qqq xyz"])
def test_explain_a_text_without_known_features_has_no_terms_and_the_bias_is_the_logit(served, text) -> None:
    probability, _, (explanation,) = served.explain([text])

    assert explanation.terms == ()
    assert explanation.bias == pytest.approx(_logit(probability)[0], abs=1e-5)


def test_explain_a_batch_gives_each_text_the_explanation_it_gets_alone(served) -> None:
    texts = ["great food", "terrible cold service, not good", "", "good good good friendly staff café"]

    _, _, batch = served.explain(texts)
    alone = [served.explain([text])[2][0] for text in texts]

    for together, single in zip(batch, alone, strict=True):
        assert together.bias == single.bias
        assert [term for term, _ in together.terms] == [term for term, _ in single.terms]
        assert [w for _, w in together.terms] == pytest.approx([w for _, w in single.terms], abs=1e-6)


@pytest.mark.parametrize(
    ("tokens", "scores", "known", "expected"),
    [
        (["a", "b"], [2.0, 4.0, 8.0], [1, 1, 1], {"a": 2 / 3, "b": 4 / 3, "a b": 8 / 3}),
        (["a", "x"], [2.0, 0.0, 0.0], [1, 0, 0], {"a": 2.0}),  # unknown unigram and bigram left out, divisor 1
        (["a", "a", ""], [1.0, 1.0, 0.0, 0.5, 0.0], [1, 1, 0, 1, 0], {"a": 2 / 3, "a a": 0.5 / 3}),  # padded
        (["x"], [0.0], [0], {}),  # nothing known: divisor 1, no term
        ([], [], [], {}),
    ],
)
def test_contributions_table(tokens, scores, known, expected) -> None:
    assert predict_model.contributions(tokens, scores, known) == pytest.approx(expected)


def test_top_terms_keeps_the_ten_largest_by_magnitude_ties_by_term() -> None:
    totals = {f"t{i:02d}": (-1) ** i * i for i in range(15)} | {"tie": 14}

    top = predict_model.top_terms(totals)

    assert [term for term, _ in top] == ["t14", "tie", "t13", "t12", "t11", "t10", "t09", "t08", "t07", "t06"]


def test_bigram_joiner_is_trainings() -> None:
    assert predict_model.BIGRAM_JOINER == preprocess.BIGRAM_JOINER
    assert preprocess.TOKENS in EXPLANATION_OUTPUTS  # the graph's token tensor is the output, by name


def test_a_model_without_explanation_outputs_serves_and_does_not_explain(vocabulary) -> None:
    import onnx

    graph = onnx.load_from_string(_model(vocabulary))
    kept = [o for o in graph.graph.output if o.name not in EXPLANATION_OUTPUTS]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)

    older = _served(graph.SerializeToString())

    assert older.explains is False
    assert older.infer(["great food"])[0].shape == (1,)
