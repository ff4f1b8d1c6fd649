"""Helpers of the benchmarks: a staged model to serve (with the torch twin of its checkpoint, or with its
monitoring reference)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sentiment_core.contract import REFERENCE_FILENAME

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / ".local" / "models" / "latest"  # `make demo` writes it and latest.pt
REVIEWS = [
    "The food was delicious and the staff were lovely, we will come back soon.",
    "Cold fries, rude cashier and a dirty table. Never again.",
    "Decent coffee but the pastries were stale and overpriced.",
    "Best tacos in town! The salsa bar is amazing.",
]


class ModelError(Exception):
    """A model folder a benchmark cannot use; the message says why and what to do."""


def staged_model(path: Path | None) -> tuple[Path, Path]:
    """(staged folder, PyTorch checkpoint of the same run): the given ones, the demo's, or freshly trained."""
    folder = path or DEFAULT_MODEL
    checkpoint = folder.with_suffix(".pt")
    if (folder / "model.onnx").is_file() and checkpoint.is_file():
        return folder, checkpoint
    folder = Path(tempfile.mkdtemp(prefix="bench-model-")) / "model"
    checkpoint = folder.with_suffix(".pt")
    print(f"no staged model with a checkpoint found; training one into {folder} (about 90 s) ...", flush=True)
    _train(folder, checkpoint)
    return folder, checkpoint


def monitored_model(path: Path | None) -> Path:
    """A staged folder with monitoring's reference.json: the given one (refused without it), the demo's, or one
    freshly trained."""
    if path is not None:
        if not (path / "model.onnx").is_file():
            raise ModelError(f"{path} is not a staged model folder: it has no model.onnx")
        if not (path / REFERENCE_FILENAME).is_file():
            raise ModelError(
                f"{path} has no {REFERENCE_FILENAME} (staged before monitoring existed): retrain it with "
                "`python -m training.train --output-dir DIR`, or leave --model out to train one on the spot"
            )
        return path
    if (DEFAULT_MODEL / "model.onnx").is_file():
        if (DEFAULT_MODEL / REFERENCE_FILENAME).is_file():
            return DEFAULT_MODEL
        print(f"{DEFAULT_MODEL} has no {REFERENCE_FILENAME} (staged before monitoring existed)", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-model-")) / "model"
    print(f"training a model with its monitoring reference into {folder} (about 90 s) ...", flush=True)
    _train(folder)
    return folder


def _train(folder: Path, checkpoint: Path | None = None) -> None:
    """`training.train` on the default data into a staged folder, tracked in a throwaway MLflow store."""
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
            *(["--checkpoint", str(checkpoint)] if checkpoint is not None else []),
        ],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def predict_env(firestore_host: str, model_dir: Path) -> dict[str, str]:
    """The settings predict needs, pointed at a local Firestore emulator."""
    return {
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "GOOGLE_CLOUD_PROJECT": "demo-bench",
        "FEEDBACK_TOKEN_SECRET": "bench-secret-0123456789",
        "MODEL_URI": str(model_dir),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))
