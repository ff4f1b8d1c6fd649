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


def _attribute(node: onnx.NodeProto, name: str) -> list:
    return list(onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == name)))


def _features_of(model: onnx.ModelProto) -> tuple[preprocess.Vocabulary, dict[int, int]]:
    """The vocabulary the shipped graph holds, decoded from its own tables, and its key -> feature id map."""
    token_encoder, score_encoder = [node for node in model.graph.node if node.op_type == "LabelEncoder"][:2]
    ids, tokens = _attribute(token_encoder, "values_int64s"), _attribute(token_encoder, "keys_strings")
    token_of = dict(zip(ids, tokens, strict=True))
    stride = int(next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "stride"))
    keys = _attribute(score_encoder, "keys_int64s")

    def feature(key: int) -> str:
        if key < stride:
            return token_of[key].decode()
        return f"{token_of[key // stride].decode()} {token_of[key % stride].decode()}"

    tokenizer = next(node for node in model.graph.node if node.op_type == "Tokenizer")
    pattern = onnx.helper.get_attribute_value(next(a for a in tokenizer.attribute if a.name == "tokenexp")).decode()
    vocabulary = preprocess.Vocabulary(features=tuple(feature(key) for key in keys), token_pattern=pattern)
    return vocabulary, {key: i for i, key in enumerate(keys, start=1)}


def test_training_and_exported_graph_compute_identical_features_on_all_default_data(trained_full: dict) -> None:
    """The ids training fed PyTorch equal the features the shipped graph looks up, on every default text."""
    model_bytes = (Path(trained_full["staged_dir"]) / "model.onnx").read_bytes()
    vocabulary, feature_id = _features_of(onnx.load_from_string(model_bytes))
    texts = data.load_dataset(None).texts
    session = export.session(model_bytes, extra_outputs=[export.FEATURE_KEYS])

    expected = vocabulary.encode(preprocess.tokenize(texts, pattern=vocabulary.token_pattern))
    mismatches = []
    for start in range(0, len(texts), 4096):
        batch = np.array(texts[start : start + 4096], dtype=object)
        (keys,) = session.run([export.FEATURE_KEYS], {"text": batch})
        for offset, row in enumerate(keys.tolist()):
            if [feature_id[k] for k in row if k in feature_id] != expected[start + offset]:
                mismatches.append(start + offset)

    assert len(texts) == 178_107
    assert len(vocabulary) > 100_000
    assert mismatches == []


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("I didn't like it's", ["i", "didn", "'t", "like", "it", "'s"]),
        ("i did n't like it 's", ["i", "did", "n", "'t", "like", "it", "'s"]),
        ("the 'soup' rocks", ["the", "'soup", "rocks"]),
    ],
)
def test_tokenize_split_apostrophes_pattern_gives_raw_and_tokenised_text_the_same_clitics(
    text: str, tokens: list[str]
) -> None:
    assert preprocess.tokenize([text], pattern=preprocess.SPLIT_APOSTROPHES_PATTERN) == [tokens]
