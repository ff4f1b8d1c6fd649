from pathlib import Path

import numpy as np
import onnx
import pytest

from training import data, export, preprocess


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Great food!! Don't go", ["great", "food", "don't", "go"]),
        ("café au lait", ["café", "au", "lait"]),  # RE2's \w would have cut 'café'
        ("ΣΟΦΟΣ", ["σοφοσ"]),
        ("İstanbul", ["istanbul"]),  # StringNormalizer, not str.lower() (which gives 'i̇stanbul')
        ("_num_ stars", ["_num_", "stars"]),
        ("tab\tand\nnewline", ["tab", "and", "newline"]),
        ("", []),
        ("  !!! ...  ", []),
        ("寿司", ["寿司"]),
    ],
)
def test_tokenize_awkward_inputs_give_expected_tokens(text: str, tokens: list[str]) -> None:
    assert preprocess.tokenize([text]) == [tokens]


def test_tokenize_batches_agree_with_single_calls() -> None:
    texts = ["one two", "", "three", "Four FIVE six"] * 3

    assert preprocess.tokenize(texts, batch_size=5) == [preprocess.tokenize([t])[0] for t in texts]


def test_vocabulary_build_keeps_frequent_features_in_stable_order() -> None:
    tokens = [["good", "food"], ["good", "food"], ["bad", "food"]]

    vocabulary = preprocess.Vocabulary.build(tokens, min_count=2, max_size=10)
    capped = preprocess.Vocabulary.build(tokens, min_count=1, max_size=2)

    assert vocabulary.features == ("food", "good", "good food")
    assert capped.features == ("food", "good")
    assert vocabulary.encode([["good", "food", "unknown"], []]) == [[2, 1, 3], []]


def _vocabulary_of(model: onnx.ModelProto) -> preprocess.Vocabulary:
    encoder = next(node for node in model.graph.node if node.op_type == "LabelEncoder")
    keys = next(attr for attr in encoder.attribute if attr.name == "keys_strings").strings
    return preprocess.Vocabulary(features=tuple(key.decode() for key in keys))


def test_training_and_exported_graph_compute_identical_features_on_all_default_data(trained: dict) -> None:
    """The ids training fed PyTorch equal the ids the shipped graph computes, on every default text."""
    model_bytes = (Path(trained["staged_dir"]) / "model.onnx").read_bytes()
    vocabulary = _vocabulary_of(onnx.load_from_string(model_bytes))
    texts = data.load_dataset(None).texts
    session = export.session(model_bytes, extra_outputs=[export.FEATURE_IDS])

    expected = vocabulary.encode(preprocess.tokenize(texts))
    mismatches = []
    for start in range(0, len(texts), 4096):
        batch = np.array(texts[start : start + 4096], dtype=object)
        (ids,) = session.run([export.FEATURE_IDS], {"text": batch})
        for offset, row in enumerate(ids.tolist()):
            if [i for i in row if i] != expected[start + offset]:
                mismatches.append(start + offset)

    assert len(texts) == 178_107
    assert mismatches == []
