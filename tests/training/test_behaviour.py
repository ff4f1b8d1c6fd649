"""Behavioural tests (minimum functionality, invariance, direction) on the shipped ONNX model."""

from pathlib import Path

import numpy as np
import pytest

from training import export


@pytest.fixture(scope="module")
def predict(trained_full: dict):
    session = export.session((Path(trained_full["staged_dir"]) / "model.onnx").read_bytes())
    return lambda texts: export.onnx_probabilities(session, list(texts))


@pytest.mark.parametrize(
    "text",
    [
        "The food was delicious and the staff were lovely.",
        "Best pizza in town, highly recommend!",
        "Great service, great prices, we will be back.",
        "Absolutely loved it.",
    ],
)
def test_clear_positive_reviews_are_positive(predict, text: str) -> None:
    assert predict([text])[0] > 0.7


@pytest.mark.parametrize(
    "text",
    [
        "The food was cold and the waiter was rude.",
        "Worst service ever, never coming back.",
        "Dirty tables, overpriced and bland food.",
        "Absolutely horrible experience.",
    ],
)
def test_clear_negative_reviews_are_negative(predict, text: str) -> None:
    assert predict([text])[0] < 0.3


@pytest.mark.parametrize(
    ("positive", "negated"),
    [
        ("The food was good.", "The food was not good."),
        ("I would recommend this place.", "I would not recommend this place."),
        ("The staff are friendly.", "The staff are not friendly."),
        ("I liked it.", "I did not like it."),
        ("This place is worth it.", "This place is not worth it."),
    ],
)
def test_negation_lowers_the_probability(predict, positive: str, negated: str) -> None:
    before, after = predict([positive, negated])

    assert after < before - 0.1


@pytest.mark.parametrize(
    ("text", "variant"),
    [
        ("Great food and friendly staff", "GREAT FOOD AND FRIENDLY STAFF"),
        ("Great food and friendly staff", "great food and friendly staff"),
        ("Great food and friendly staff", "  Great   food\tand\n friendly    staff  "),
        ("The soup was cold", "The soup was cold!!!"),
    ],
)
def test_case_whitespace_and_punctuation_do_not_change_the_answer(predict, text: str, variant: str) -> None:
    np.testing.assert_allclose(predict([variant]), predict([text]), atol=1e-6)


@pytest.mark.parametrize(
    ("base", "worse"),
    [
        ("We had dinner here on Friday.", "We had dinner here on Friday. It was terrible."),
        ("The room is big.", "The room is big but filthy."),
    ],
)
def test_adding_a_complaint_lowers_the_probability(predict, base: str, worse: str) -> None:
    before, after = predict([base, worse])

    assert after < before


@pytest.mark.parametrize(
    ("base", "better"),
    [
        ("We had dinner here on Friday.", "We had dinner here on Friday. It was wonderful."),
        ("The room is big.", "The room is big and spotless."),
    ],
)
def test_adding_praise_raises_the_probability(predict, base: str, better: str) -> None:
    before, after = predict([base, better])

    assert after > before


def test_empty_and_unknown_texts_give_finite_probabilities(predict) -> None:
    probabilities = predict(["", "   ", "qzxv wvvq", "!!!"])

    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities > 0) & (probabilities < 1))


@pytest.mark.parametrize("text", ["The staff were friendly.", "The pasta was delicious."])
def test_short_past_tense_praise_is_positive(predict, text: str) -> None:
    # The training sentences narrate complaints in the past: without training's tense copies this read as negative.
    assert predict([text])[0] > 0.5
