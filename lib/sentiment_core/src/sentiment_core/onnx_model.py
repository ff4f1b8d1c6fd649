"""Opening the contract's ONNX model: one place for predict (serving) and the deploy gate (checking)."""

from __future__ import annotations

import threading
from typing import Any

from sentiment_core.contract import EXPLANATION_OUTPUTS, INPUT_NAME, KNOWN_FRACTION_OUTPUT, OUTPUT_NAME

_OUTPUTS = [OUTPUT_NAME]
_WITH_KNOWN = [OUTPUT_NAME, KNOWN_FRACTION_OUTPUT]
_PER_THREAD = threading.local()  # one onnxruntime.RunOptions per serving thread


class ModelContractError(ValueError):
    """The bytes are not a loadable model with input `text` string [N] and output `probability` float [N]."""


def open_session(model_bytes: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session on the bytes, checked against the contract's signature."""
    import onnxruntime as ort  # imported here: the package's other users never load a model

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    # training.export writes the graph onnxruntime's optimizers would produce (they only reorder its nodes;
    # tests/training/test_export.py checks it), so running them again only costs: 45 -> 30 ms per session,
    # on every cold start of predict.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise ModelContractError(f"onnxruntime cannot load the model: {exc}") from exc
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    outputs = [(o.name, o.type) for o in session.get_outputs()]
    if inputs != [(INPUT_NAME, "tensor(string)")] or (OUTPUT_NAME, "tensor(float)") not in outputs:
        raise ModelContractError(f"the model does not have the contract's signature: {inputs} -> {outputs}")
    return session


def probabilities(session: Any, texts: list[str]) -> Any:
    """float32 [len(texts)]; texts must be non-empty (StringNormalizer rejects an empty batch)."""
    import numpy as np

    # Without RunOptions the binding builds default ones on every call (2.7 us of a ~25 us inference,
    # docs/serving.md), so each thread keeps one.
    (result,) = session.run(_OUTPUTS, {INPUT_NAME: np.array(texts, dtype=object)}, _run_options())
    return result


def has_known_fraction(session: Any) -> bool:
    """Whether the model reports known_fraction (models exported before it existed do not)."""
    return (KNOWN_FRACTION_OUTPUT, "tensor(float)") in [(o.name, o.type) for o in session.get_outputs()]


def probabilities_and_known(session: Any, texts: list[str]) -> tuple[Any, Any]:
    """Probabilities and known fractions, float32 [len(texts)] each; the model must have known_fraction."""
    import numpy as np

    probability, known = session.run(_WITH_KNOWN, {INPUT_NAME: np.array(texts, dtype=object)}, _run_options())
    return probability, known


def has_outputs(session: Any, names: tuple[str, ...] | list[str]) -> bool:
    """Whether the model declares every one of these outputs (older models lack the optional ones)."""
    return set(names) <= {o.name for o in session.get_outputs()}


def has_explanation(session: Any) -> bool:
    """Whether the model exposes what explains its answers (contract.EXPLANATION_OUTPUTS)."""
    return has_outputs(session, EXPLANATION_OUTPUTS)


def run_outputs(session: Any, names: list[str], texts: list[str]) -> list[Any]:
    """The named outputs for the texts, in order; texts must be non-empty. Only these outputs are computed."""
    import numpy as np

    return session.run(names, {INPUT_NAME: np.array(texts, dtype=object)}, _run_options())


def _run_options() -> Any:
    options = getattr(_PER_THREAD, "run_options", None)
    if options is None:
        import onnxruntime as ort

        options = _PER_THREAD.run_options = ort.RunOptions()
    return options
