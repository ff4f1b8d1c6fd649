"""Export: the trained weights inside the text-in ONNX graph of docs/architecture.md, checked against PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sentiment_core.contract import (
    BIAS_OUTPUT,
    FEATURE_KNOWN_OUTPUT,
    FEATURE_SCORES_OUTPUT,
    INPUT_NAME,
    KNOWN_FRACTION_OUTPUT,
    META_LABEL_RULE,
    META_RUN_ID,
    META_THRESHOLD,
    META_TRAINING_DATA_SHA256,
    OUTPUT_NAME,
    TOKENS_OUTPUT,
)
from training.model import FastTextClassifier, predict_proba
from training.preprocess import BIGRAM_JOINER, OPSET_IMPORTS, TOKENS, Vocabulary, tokenize, tokenizer_nodes

TOKEN_IDS = "token_ids"  # [N, T] int64, UNKNOWN_TOKEN for a token outside the vocabulary and for padding
FEATURE_KEYS = "feature_keys"  # [N, 2T - 1] int64: unigram keys then bigram keys (FeatureKeys)
UNKNOWN_TOKEN = -1
PARITY_TOLERANCE = 1e-5
_TENSOR_TYPES = {TensorProto.FLOAT: "tensor(float)", TensorProto.STRING: "tensor(string)"}


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with the PyTorch model."""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """metadata_props of the exported model (contract)."""

    mlflow_run_id: str
    label_rule: str
    threshold: float
    training_data_sha256: str

    def as_props(self) -> dict[str, str]:
        return {
            META_RUN_ID: self.mlflow_run_id,
            META_LABEL_RULE: self.label_rule,
            META_THRESHOLD: repr(float(self.threshold)),
            META_TRAINING_DATA_SHA256: self.training_data_sha256,
        }


@dataclasses.dataclass(frozen=True)
class FeatureKeys:
    """The vocabulary as integers: how the graph names a feature without building strings.

    Each token of the vocabulary (alone or inside a bigram) gets an id 1..K; a token outside it, and the
    tokenizer's "" padding, get -1. A unigram's key is its token id; a bigram's key is left * stride + right.
    With stride = K + 2 the key sets cannot collide: unigram keys lie in [1, K]; bigram keys of two known
    tokens are >= stride + 1; an unknown left gives a negative key; an unknown right gives
    (left - 1) * stride + (stride - 1), which no known pair reaches since a right id is at most stride - 2.
    """

    tokens: tuple[str, ...]  # token id i + 1 is tokens[i]
    stride: int
    keys: tuple[int, ...]  # keys[i] names vocabulary feature i + 1

    @classmethod
    def of(cls, vocabulary: Vocabulary) -> FeatureKeys:
        parts = [feature.split(BIGRAM_JOINER) for feature in vocabulary.features]
        tokens = tuple(sorted({token for pair in parts for token in pair}))
        token_id = {token: i for i, token in enumerate(tokens, start=1)}
        stride = len(tokens) + 2
        keys = tuple(
            token_id[pair[0]] if len(pair) == 1 else token_id[pair[0]] * stride + token_id[pair[1]] for pair in parts
        )
        return cls(tokens=tokens, stride=stride, keys=keys)


def build_onnx(model: FastTextClassifier, vocabulary: Vocabulary, metadata: ModelMetadata) -> onnx.ModelProto:
    """Text [N] -> tokens -> token ids -> unigram and bigram keys -> mean of known feature scores + bias ->
    Sigmoid -> probability [N].

    The linear layer is folded into the embeddings: w . mean(E[ids]) = mean(E[ids] . w), so each feature
    needs one precomputed score instead of a D-dimensional vector. Same function, D times smaller and faster.
    Bigrams are paired as integers, not strings: string slicing and concatenation were a third of the time
    of a one-review inference (see docs/serving.md).
    """
    embeddings = model.embedding.weight.detach().double().numpy()
    weight = model.linear.weight.detach().double().numpy()[0]  # [D]
    # A weighted bag (training.model.FastTextClassifier) sums w_i * score_i over sum(w_i): the same nodes with
    # w_i in place of each feature's count of 1.
    if model.feature_weights is None:
        known = np.ones(len(embeddings) - 1, dtype=np.float32)
    else:
        known = model.feature_weights.detach().numpy()[1:].astype(np.float32)
    scores = (embeddings @ weight).astype(np.float32)  # [V + 1]; row 0 (unknown) is never looked up
    if model.feature_weights is not None:
        scores = (scores.astype(np.float64) * model.feature_weights.detach().double().numpy()).astype(np.float32)
    bias = model.linear.bias.detach().numpy().astype(np.float32).copy()  # [1]
    feature_keys = FeatureKeys.of(vocabulary)
    keys = list(feature_keys.keys)
    unigram_ids = [key for key, feature in zip(keys, vocabulary.features, strict=True) if BIGRAM_JOINER not in feature]

    nodes = [
        *tokenizer_nodes(INPUT_NAME, vocabulary.token_pattern),
        helper.make_node(
            "LabelEncoder",
            [TOKENS],
            [TOKEN_IDS],
            domain="ai.onnx.ml",
            keys_strings=list(feature_keys.tokens),
            values_int64s=list(range(1, len(feature_keys.tokens) + 1)),
            default_int64=UNKNOWN_TOKEN,
        ),
        helper.make_node("Slice", [TOKEN_IDS, "zero", "minus_one", "one"], ["left"]),
        helper.make_node("Slice", [TOKEN_IDS, "one", "last", "one"], ["right"]),
        helper.make_node("Mul", ["left", "stride"], ["left_scaled"]),
        helper.make_node("Add", ["left_scaled", "right"], ["bigram_keys"]),
        helper.make_node("Concat", [TOKEN_IDS, "bigram_keys"], [FEATURE_KEYS], axis=1),
        helper.make_node(
            "LabelEncoder",
            [FEATURE_KEYS],
            [FEATURE_SCORES_OUTPUT],
            domain="ai.onnx.ml",
            keys_int64s=keys,
            values_floats=scores[1:].tolist(),
            default_float=0.0,
        ),
        helper.make_node(
            "LabelEncoder",
            [FEATURE_KEYS],
            [FEATURE_KNOWN_OUTPUT],
            domain="ai.onnx.ml",
            keys_int64s=keys,
            values_floats=known.tolist(),
            default_float=0.0,
        ),
        # "one" doubles as the axis of the sums: onnxruntime would merge the two equal initializers anyway.
        helper.make_node("ReduceSum", [FEATURE_SCORES_OUTPUT, "one"], ["score_sum"], keepdims=0),
        helper.make_node("ReduceSum", [FEATURE_KNOWN_OUTPUT, "one"], ["known_count"], keepdims=0),
        # An empty or all-unknown text has no known feature: divide by 1, giving probability sigmoid(bias),
        # finite, exactly as EmbeddingBag's empty bag.
        helper.make_node("Max", ["known_count", "one_float"], ["divisor"]),
        helper.make_node("Div", ["score_sum", "divisor"], ["mean_score"]),
        helper.make_node("Add", ["mean_score", BIAS_OUTPUT], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
        # known_fraction: the text's tokens that are a unigram of the vocabulary, over its tokens (padding "" is
        # not a token). A text without tokens knows nothing: 0.
        helper.make_node(
            "LabelEncoder",
            [TOKENS],
            ["token_present"],
            domain="ai.onnx.ml",
            keys_strings=[""],
            values_floats=[0.0],
            default_float=1.0,
        ),
        helper.make_node(
            "LabelEncoder",
            [TOKEN_IDS],
            ["token_known"],
            domain="ai.onnx.ml",
            keys_int64s=unigram_ids or [UNKNOWN_TOKEN - 1],  # an empty key list is invalid; -2 is never an id
            values_floats=[1.0] * max(len(unigram_ids), 1),
            default_float=0.0,
        ),
        helper.make_node("ReduceSum", ["token_present", "one"], ["token_count"], keepdims=0),
        helper.make_node("ReduceSum", ["token_known", "one"], ["known_tokens"], keepdims=0),
        helper.make_node("Max", ["token_count", "one_float"], ["token_divisor"]),
        helper.make_node("Div", ["known_tokens", "token_divisor"], [KNOWN_FRACTION_OUTPUT]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "last"),
        numpy_helper.from_array(np.array(feature_keys.stride, np.int64), "stride"),
        numpy_helper.from_array(bias, BIAS_OUTPUT),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_float"),
    ]
    graph = helper.make_graph(
        nodes,
        "yelp_sentiment",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(KNOWN_FRACTION_OUTPUT, TensorProto.FLOAT, ["N"]),
            *_explanation_outputs(),
        ],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=OPSET_IMPORTS,
        producer_name="yelp-sentiment-training",
        doc_string="Yelp review sentiment: raw text in, probability of a positive review out.",
    )
    onnx_model.ir_version = 10  # what onnxruntime 1.2x+ reads; newer IRs would lock out older runtimes
    helper.set_model_props(onnx_model, metadata.as_props())
    return onnx_model


def _explanation_outputs() -> list[onnx.ValueInfoProto]:
    """What explains an answer: logit = bias + sum over known features of score / divisor (docs/architecture.md),
    the divisor being max(sum of feature_known, 1).

    Tensors the graph computes anyway, declared as outputs: onnxruntime computes only the outputs a run fetches
    (declared, they still cost a plain prediction about 1 us of 13, bench/latency.py; the divisor, derived exactly
    from feature_known, is left out). The
    bias is the initializer itself (an Identity naming it would be constant-folded by onnxruntime's optimizers,
    against test_export's check that they find nothing to change).
    """
    return [
        helper.make_tensor_value_info(TOKENS_OUTPUT, TensorProto.STRING, ["N", "T"]),
        helper.make_tensor_value_info(FEATURE_SCORES_OUTPUT, TensorProto.FLOAT, ["N", "F"]),
        helper.make_tensor_value_info(FEATURE_KNOWN_OUTPUT, TensorProto.FLOAT, ["N", "F"]),
        helper.make_tensor_value_info(BIAS_OUTPUT, TensorProto.FLOAT, [1]),
    ]


def check(onnx_model: onnx.ModelProto) -> None:
    """onnx.checker (plain: full_check segfaults on Tokenizer -> LabelEncoder in onnx 1.23.2)."""
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the model: {exc}") from exc


def session(model_bytes: bytes, extra_outputs: Sequence[str] = ()) -> ort.InferenceSession:
    """An onnxruntime session on serialized model bytes, optionally exposing intermediate tensors."""
    if extra_outputs:
        model = onnx.load_from_string(model_bytes)
        for name in extra_outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
        model_bytes = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def onnx_probabilities(sess: ort.InferenceSession, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
    """Run the exported graph on texts in batches (StringNormalizer rejects an empty batch)."""
    return _output_in_batches(sess, OUTPUT_NAME, texts, batch_size)


def onnx_known_fractions(sess: ort.InferenceSession, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
    """The graph's known_fraction output on texts, in batches."""
    return _output_in_batches(sess, KNOWN_FRACTION_OUTPUT, texts, batch_size)


def _output_in_batches(sess: ort.InferenceSession, output: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = np.array(texts[start : start + batch_size], dtype=object)
        (out[start : start + len(batch)],) = sess.run([output], {INPUT_NAME: batch})
    return out


def python_known_fractions(vocabulary: Vocabulary, texts: Sequence[str]) -> np.ndarray:
    """known_fraction computed in Python from the same tokens: what the graph must agree with."""
    index = vocabulary.index
    token_lists = tokenize(list(texts), pattern=vocabulary.token_pattern)
    fractions = [sum(1 for token in tokens if token in index) / max(len(tokens), 1) for tokens in token_lists]
    return np.asarray(fractions, dtype=np.float32)


def torch_probabilities(model: FastTextClassifier, vocabulary: Vocabulary, texts: Sequence[str]) -> np.ndarray:
    """PyTorch's probabilities for raw texts, through the same tokenisation."""
    return predict_proba(model, vocabulary.encode(tokenize(texts, pattern=vocabulary.token_pattern)))


def verify_parity(model_bytes: bytes, model: FastTextClassifier, vocabulary: Vocabulary, texts: Sequence[str]) -> float:
    """Largest |onnx - torch| over texts; raises ExportError above PARITY_TOLERANCE."""
    reloaded = session(model_bytes)
    _check_signature(reloaded)
    difference = np.abs(onnx_probabilities(reloaded, texts) - torch_probabilities(model, vocabulary, texts))
    known = np.abs(onnx_known_fractions(reloaded, texts) - python_known_fractions(vocabulary, texts))
    if known.max(initial=0.0) > PARITY_TOLERANCE:
        index = int(np.argmax(known))
        raise ExportError(f"the graph's known_fraction disagrees with Python's on text #{index}: {texts[index][:80]!r}")
    worst = float(difference.max(initial=0.0))
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        index = int(np.nanargmax(difference))
        raise ExportError(
            f"ONNX and PyTorch disagree by {worst:.3g} (> {PARITY_TOLERANCE}) on text #{index}: {texts[index][:80]!r}"
        )
    return worst


def _check_signature(sess: ort.InferenceSession) -> None:
    inputs = [(i.name, i.type) for i in sess.get_inputs()]
    outputs = [(o.name, o.type) for o in sess.get_outputs()]
    expected = [(OUTPUT_NAME, "tensor(float)"), (KNOWN_FRACTION_OUTPUT, "tensor(float)")] + [
        (o.name, _TENSOR_TYPES[o.type.tensor_type.elem_type]) for o in _explanation_outputs()
    ]
    if inputs != [(INPUT_NAME, "tensor(string)")] or outputs != expected:
        raise ExportError(f"unexpected model signature: inputs {inputs}, outputs {outputs}")
