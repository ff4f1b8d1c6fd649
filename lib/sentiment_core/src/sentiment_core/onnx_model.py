"""Opening the contract's ONNX model: one place for predict (serving) and the deploy gate (checking)."""

from __future__ import annotations

from typing import Any

from sentiment_core.contract import INPUT_NAME, OUTPUT_NAME


class ModelContractError(ValueError):
    """The bytes are not a loadable model with input `text` string [N] and output `probability` float [N]."""


def open_session(model_bytes: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU session on the bytes, checked against the contract's signature."""
    import onnxruntime as ort  # imported here: the package's other users never load a model

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
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

    feed = {INPUT_NAME: np.array(texts, dtype=object)}
    # InferenceSession.run re-checks, on every call, that the feed names every input, who owns any OrtValue
    # in it and whether WebGPU graph capture is on: about 3.5 us, 15 % of a one-review inference here. The
    # feed is always one numpy array under the input open_session checked, so the native session it wraps
    # is called directly when this onnxruntime has one (it has since 1.0; the public path stays the fallback).
    native = getattr(session, "_sess", None)
    if native is not None:
        (result,) = native.run(_OUTPUTS, feed, None)
    else:
        (result,) = session.run(_OUTPUTS, feed)
    return result


_OUTPUTS = [OUTPUT_NAME]
