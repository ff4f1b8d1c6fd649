"""sentiment_core.onnx_model: the contract's session and the call predict makes on every request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper

from sentiment_core.contract import INPUT_NAME, OUTPUT_NAME
from sentiment_core.onnx_model import ModelContractError, open_session, probabilities


def _length_model() -> bytes:
    """A tiny contract model: probability = 1 / (1 + number of tokens), so every text has a known answer."""
    nodes = [
        helper.make_node(
            "Tokenizer",
            [INPUT_NAME],
            ["tokens"],
            domain="com.microsoft",
            mark=0,
            mincharnum=1,
            pad_value="",
            tokenexp=r"\S+",
        ),
        helper.make_node("Equal", ["tokens", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_token"]),
        helper.make_node("Cast", ["is_token"], ["ones"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ones", "axis_1"], ["count"], keepdims=0),
        helper.make_node("Add", ["count", "one"], ["divisor"]),
        helper.make_node("Reciprocal", ["divisor"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "length",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[
            helper.make_tensor("pad", TensorProto.STRING, [], [b""]),
            helper.make_tensor("axis_1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model.SerializeToString()


TEXTS = ["one", "one two three", "", "a b c d e f g h i"]
EXPECTED = np.array([1 / 2, 1 / 4, 1 / 1, 1 / 10], dtype=np.float32)


def test_probabilities_answers_every_text_of_a_batch_and_one_by_one() -> None:
    session = open_session(_length_model())

    batch = probabilities(session, TEXTS)
    single = np.array([probabilities(session, [text])[0] for text in TEXTS])

    assert batch.dtype == np.float32
    assert batch.shape == (4,)
    np.testing.assert_allclose(batch, EXPECTED)
    np.testing.assert_allclose(single, EXPECTED)


def test_probabilities_raises_onnxruntime_errors() -> None:
    session = open_session(_length_model())

    with pytest.raises(Exception, match=r"(?i)rank|shape|dimension"):
        probabilities(session, [["nested", "list"]])  # a [1, 2] tensor where the model takes [N]


def test_open_session_rejects_bytes_that_are_not_a_contract_model() -> None:
    wrong_output = _length_model().replace(OUTPUT_NAME.encode(), b"probabilitx")

    with pytest.raises(ModelContractError, match="cannot load"):
        open_session(b"not an onnx file")
    with pytest.raises(ModelContractError, match="signature"):
        open_session(wrong_output)


def test_probabilities_from_many_threads_at_once_each_get_their_own_answers() -> None:
    """predict serves 8 threads per instance from one session; each thread keeps its own RunOptions."""
    session = open_session(_length_model())
    texts = [" ".join(["w"] * n) for n in range(40)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda text: float(probabilities(session, [text])[0]), texts * 25))

    np.testing.assert_allclose(answers, [1 / (1 + n) for n in range(40)] * 25, rtol=1e-6)
