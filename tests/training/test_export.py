import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sentiment_core.contract import INPUT_NAME, KNOWN_FRACTION_OUTPUT, OUTPUT_NAME, REQUIRED_METADATA
from training import export, preprocess
from training.model import FastTextClassifier

AWKWARD = [
    "Great food, friendly staff!",
    "terrible terrible service",
    "",
    "   ",
    "!!!",
    "zzzz unknownword",
    "GREAT food",
    "İstanbul ΣΟΦΟΣ café",
    "line\nbreak\tand tab",
    "good " * 500,
    "😀",
]
METADATA = export.ModelMetadata(
    mlflow_run_id="run123", label_rule="stars>=3", threshold=0.5, training_data_sha256="ab" * 32
)


def _random_model(vocabulary: preprocess.Vocabulary, dim: int, seed: int) -> FastTextClassifier:
    torch.manual_seed(seed)
    model = FastTextClassifier(len(vocabulary), dim)
    with torch.no_grad():
        model.embedding.weight.normal_()
        model.embedding.weight[0].zero_()
        model.linear.weight.normal_()
        model.linear.bias.fill_(0.3)
    return model.eval()


@pytest.fixture
def small_model() -> tuple[FastTextClassifier, preprocess.Vocabulary]:
    vocabulary = preprocess.Vocabulary.build(
        preprocess.tokenize(["great food friendly staff", "terrible service", "good good food", "café"]),
        min_count=1,
        max_size=100,
    )
    return _random_model(vocabulary, 8, seed=0), vocabulary


def test_build_onnx_has_contract_signature_and_metadata(small_model) -> None:
    onnx_model = export.build_onnx(*small_model, METADATA)
    export.check(onnx_model)

    session = export.session(onnx_model.SerializeToString())
    props = {p.key: p.value for p in onnx_model.metadata_props}

    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [(INPUT_NAME, "tensor(string)", ["N"])]
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        (OUTPUT_NAME, "tensor(float)", ["N"]),
        (KNOWN_FRACTION_OUTPUT, "tensor(float)", ["N"]),
        # The explanation outputs (contract.EXPLANATION_OUTPUTS), by the names docs/architecture.md gives them.
        ("tokens", "tensor(string)", ["N", "T"]),
        ("feature_scores", "tensor(float)", ["N", "F"]),
        ("feature_known", "tensor(float)", ["N", "F"]),
        ("bias", "tensor(float)", [1]),
    ]
    assert set(REQUIRED_METADATA) <= props.keys()
    assert props["mlflow_run_id"] == "run123"
    assert props["label_rule"] == "stars>=3"
    assert float(props["threshold"]) == 0.5


def test_build_onnx_matches_pytorch_on_awkward_texts(small_model) -> None:
    model_bytes = export.build_onnx(*small_model, METADATA).SerializeToString()

    worst = export.verify_parity(model_bytes, *small_model, AWKWARD)

    assert worst <= export.PARITY_TOLERANCE


def test_known_fraction_is_the_share_of_tokens_that_are_vocabulary_unigrams(small_model) -> None:
    session = export.session(export.build_onnx(*small_model, METADATA).SerializeToString())
    texts = ["great food", "great zzz", "zzz yyy xxx great", "", "!!!", "GREAT FOOD friendly", "café olé"]

    known = export.onnx_known_fractions(session, texts)

    np.testing.assert_allclose(known, [1.0, 0.5, 0.25, 0.0, 0.0, 1.0, 0.5], atol=1e-7)
    np.testing.assert_allclose(known, export.python_known_fractions(small_model[1], texts), atol=1e-7)


def test_verify_parity_refuses_a_graph_whose_known_fraction_disagrees_with_python(small_model) -> None:
    onnx_model = export.build_onnx(*small_model, METADATA)
    (known,) = [node for node in onnx_model.graph.node if node.output == ["token_known"]]
    (values,) = [attribute for attribute in known.attribute if attribute.name == "values_floats"]
    values.floats[:] = [0.5] * len(values.floats)  # every known token counts half: probabilities unchanged

    with pytest.raises(export.ExportError, match="known_fraction disagrees"):
        export.verify_parity(onnx_model.SerializeToString(), *small_model, AWKWARD)


def test_build_onnx_empty_and_unknown_texts_give_finite_bias_probability(small_model) -> None:
    model, _ = small_model
    session = export.session(export.build_onnx(*small_model, METADATA).SerializeToString())

    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.array(["", " ", "qqq xyz", "?!"], dtype=object)})

    expected = torch.sigmoid(model.linear.bias).item()
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)


def test_build_onnx_single_text_and_batch_agree(small_model) -> None:
    session = export.session(export.build_onnx(*small_model, METADATA).SerializeToString())

    batch = export.onnx_probabilities(session, AWKWARD)
    single = np.array([export.onnx_probabilities(session, [t])[0] for t in AWKWARD])

    # Padding changes the length of the summed axis, so float sums may differ in the last bits.
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_verify_parity_rejects_a_graph_that_drifted_from_pytorch(small_model) -> None:
    model, vocabulary = small_model
    drifted = export.build_onnx(model, vocabulary, METADATA)
    bias = next(init for init in drifted.graph.initializer if init.name == "bias")
    bias.CopyFrom(onnx.numpy_helper.from_array(np.array([0.31], np.float32), "bias"))

    with pytest.raises(export.ExportError, match="disagree"):
        export.verify_parity(drifted.SerializeToString(), model, vocabulary, AWKWARD)


def test_check_rejects_an_invalid_graph(small_model) -> None:
    broken = export.build_onnx(*small_model, METADATA)
    broken.graph.node[-1].input[0] = "no_such_tensor"

    with pytest.raises(export.ExportError, match=r"onnx\.checker"):
        export.check(broken)


def test_feature_keys_never_confuse_unknown_tokens_with_known_features() -> None:
    """A bigram kept without its unigram, unknown tokens on either side, and padding all key correctly."""
    # "a b" is a feature but "b" is not (as when max_size cuts a unigram): "b" is in the token table only.
    capped = preprocess.Vocabulary(features=("a", "a b", "c"))
    model = _random_model(capped, 4, seed=1)
    texts = ["b", "a b", "x b", "a x", "b a", "c b a", "b b", "a", "x", "a b c a b", ""]
    model_bytes = export.build_onnx(model, capped, METADATA).SerializeToString()

    session = export.session(model_bytes, extra_outputs=[export.FEATURE_KEYS])
    keys = export.FeatureKeys.of(capped)
    feature_id = {key: i for i, key in enumerate(keys.keys, start=1)}
    found = []
    for text in texts:
        (row,) = session.run([export.FEATURE_KEYS], {INPUT_NAME: np.array([text], dtype=object)})[0].tolist()
        found.append([feature_id[k] for k in row if k in feature_id])

    assert found == capped.encode(preprocess.tokenize(texts))
    assert found[:4] == [[], [1, 2], [], [1]]  # "b" alone and "x b" are unknown; "a x" is the unigram "a" only
    assert export.verify_parity(model_bytes, model, capped, texts) <= export.PARITY_TOLERANCE


def test_onnxruntime_optimizers_find_nothing_to_change_in_the_exported_graph(small_model, tmp_path) -> None:
    """sentiment_core.onnx_model opens models with optimizations off; this is the check that it loses nothing."""
    exported = export.build_onnx(*small_model, METADATA)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")

    def signature(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        return sorted((n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node)

    assert signature(optimized) == signature(exported)


def _weighted(model: FastTextClassifier, weights: torch.Tensor) -> FastTextClassifier:
    weighted = FastTextClassifier(model.embedding.num_embeddings - 1, model.embedding.embedding_dim, weights)
    state = {**model.state_dict(), "feature_weights": weights}
    weighted.load_state_dict(state)
    return weighted.eval()


def test_build_onnx_idf_weighted_bag_matches_pytorch_with_the_same_nodes(small_model) -> None:
    model, vocabulary = small_model
    weights = torch.linspace(1.0, 3.0, len(vocabulary) + 1)
    weights[0] = 0.0
    weighted = _weighted(model, weights)

    plain = export.build_onnx(model, vocabulary, METADATA)
    onnx_model = export.build_onnx(weighted, vocabulary, METADATA)

    worst = export.verify_parity(onnx_model.SerializeToString(), weighted, vocabulary, AWKWARD)
    assert worst <= export.PARITY_TOLERANCE
    assert [(n.op_type, list(n.input)) for n in onnx_model.graph.node] == [
        (n.op_type, list(n.input)) for n in plain.graph.node
    ]
    plain_p = export.onnx_probabilities(export.session(plain.SerializeToString()), AWKWARD[:2])
    weighted_p = export.onnx_probabilities(export.session(onnx_model.SerializeToString()), AWKWARD[:2])
    assert not np.allclose(plain_p, weighted_p)


def test_build_onnx_split_apostrophes_vocabulary_carries_its_tokenizer_into_the_graph() -> None:
    pattern = preprocess.SPLIT_APOSTROPHES_PATTERN
    tokens = preprocess.tokenize(["i did n't like it 's", "didn't it's great"], pattern=pattern)
    vocabulary = preprocess.Vocabulary.build(tokens, min_count=1, max_size=100, token_pattern=pattern)
    model = _random_model(vocabulary, 8, seed=1)

    onnx_model = export.build_onnx(model, vocabulary, METADATA)
    worst = export.verify_parity(onnx_model.SerializeToString(), model, vocabulary, [*AWKWARD, "didn't", "it's"])

    assert worst <= export.PARITY_TOLERANCE
    assert "'t" in vocabulary.index
    tokenizer = next(n for n in onnx_model.graph.node if n.op_type == "Tokenizer")
    assert onnx.helper.get_attribute_value(next(a for a in tokenizer.attribute if a.name == "tokenexp")) == (
        pattern.encode()
    )
