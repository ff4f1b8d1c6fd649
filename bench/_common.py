"""Helpers of the benchmarks: a staged model to serve and the torch twin of its checkpoint."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / ".local" / "models" / "latest"
REVIEWS = [
    "The food was delicious and the staff were lovely, we will come back soon.",
    "Cold fries, rude cashier and a dirty table. Never again.",
    "Decent coffee but the pastries were stale and overpriced.",
    "Best tacos in town! The salsa bar is amazing.",
]


def staged_model(path: Path | None) -> Path:
    """The staged folder to serve: the given one, the demo's, or a freshly trained one."""
    folder = path or DEFAULT_MODEL
    if (folder / "model.onnx").is_file():
        return folder
    folder = Path(tempfile.mkdtemp(prefix="bench-model-")) / "model"
    print(f"no staged model found; training one into {folder} (about 90 s) ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--quiet",
            "--tracking-uri",
            f"sqlite:///{folder.parent}/m.db",
            "--output-dir",
            str(folder),
        ],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def torch_checkpoint(model_path: Path, out: Path) -> Path:
    """The PyTorch state of the same checkpoint, read back from the ONNX initializers, plus its vocabulary."""
    import torch

    model = onnx.load(str(model_path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    encoder = next(node for node in model.graph.node if node.op_type == "LabelEncoder")
    keys = next(attr for attr in encoder.attribute if attr.name == "keys_strings").strings
    torch.save(
        {
            "embedding.weight": torch.from_numpy(weights["embeddings"].copy()),
            "linear.weight": torch.from_numpy(weights["weight"].T.copy()),
            "linear.bias": torch.from_numpy(weights["bias"].copy()),
            "vocabulary": [key.decode() for key in keys],
        },
        out,
    )
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))
