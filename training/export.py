"""Export: the trained weights inside the text-in ONNX graph of DESIGN.md, checked against PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sentiment_core.contract import (
    INPUT_NAME,
    META_LABEL_RULE,
    META_RUN_ID,
    META_THRESHOLD,
    META_TRAINING_DATA_SHA256,
    OUTPUT_NAME,
)
from training.model import FastTextClassifier, predict_proba
from training.preprocess import BIGRAMS, OPSET_IMPORTS, TOKENS, Vocabulary, tokenize, tokenizer_nodes

FEATURE_IDS = "feature_ids"  # [N, L] int64, 0 = unknown: what the embedding table is indexed with
PARITY_TOLERANCE = 1e-5


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


def build_onnx(model: FastTextClassifier, vocabulary: Vocabulary, metadata: ModelMetadata) -> onnx.ModelProto:
    """Text [N] -> tokens and bigrams -> feature ids -> mean of feature scores + bias -> Sigmoid -> probability [N].

    The linear layer is folded into the embeddings: w . mean(E[ids]) = mean(E[ids] . w), so each feature
    needs one precomputed score instead of a D-dimensional vector. Same function, D times smaller and faster.
    """
    embeddings = model.embedding.weight.detach().double().numpy()
    weight = model.linear.weight.detach().double().numpy()[0]  # [D]
    scores = (embeddings @ weight).astype(np.float32)  # [V + 1]
    scores[0] = 0.0  # id 0 (unknown/padding) adds nothing to the sum
    bias = model.linear.bias.detach().numpy().astype(np.float32).copy()  # [1]
    keys = list(vocabulary.features)

    nodes = [
        *tokenizer_nodes(INPUT_NAME),
        helper.make_node("Concat", [TOKENS, BIGRAMS], ["features"], axis=1),
        helper.make_node(
            "LabelEncoder",
            ["features"],
            [FEATURE_IDS],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_int64s=list(range(1, len(keys) + 1)),
            default_int64=0,
        ),
        helper.make_node("Gather", ["scores", FEATURE_IDS], ["feature_scores"], axis=0),
        helper.make_node("ReduceSum", ["feature_scores", "axis_1"], ["score_sum"], keepdims=0),
        helper.make_node("Greater", [FEATURE_IDS, "zero_id"], ["known"]),
        helper.make_node("Cast", ["known"], ["known_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["known_float", "axis_1"], ["known_count"], keepdims=0),
        # An empty or all-unknown text has no known feature: divide by 1, giving probability sigmoid(bias),
        # finite, exactly as EmbeddingBag's empty bag.
        helper.make_node("Max", ["known_count", "one_float"], ["divisor"]),
        helper.make_node("Div", ["score_sum", "divisor"], ["mean_score"]),
        helper.make_node("Add", ["mean_score", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME]),
    ]
    initializers = [
        numpy_helper.from_array(scores, "scores"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_1"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_id"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_float"),
    ]
    graph = helper.make_graph(
        nodes,
        "yelp_sentiment",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
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


def check(onnx_model: onnx.ModelProto) -> None:
    """onnx.checker (plain: full_check segfaults on Tokenizer -> LabelEncoder, see NOTES.md)."""
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
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = np.array(texts[start : start + batch_size], dtype=object)
        (out[start : start + len(batch)],) = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})
    return out


def torch_probabilities(model: FastTextClassifier, vocabulary: Vocabulary, texts: Sequence[str]) -> np.ndarray:
    """PyTorch's probabilities for raw texts, through the same tokenisation."""
    return predict_proba(model, vocabulary.encode(tokenize(texts)))


def verify_parity(model_bytes: bytes, model: FastTextClassifier, vocabulary: Vocabulary, texts: Sequence[str]) -> float:
    """Largest |onnx - torch| over texts; raises ExportError above PARITY_TOLERANCE."""
    reloaded = session(model_bytes)
    _check_signature(reloaded)
    difference = np.abs(onnx_probabilities(reloaded, texts) - torch_probabilities(model, vocabulary, texts))
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
    if inputs != [(INPUT_NAME, "tensor(string)")] or outputs != [(OUTPUT_NAME, "tensor(float)")]:
        raise ExportError(f"unexpected model signature: inputs {inputs}, outputs {outputs}")
