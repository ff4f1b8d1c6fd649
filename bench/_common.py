"""Helpers of the benchmarks: a staged model to serve and the torch twin of its checkpoint."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / ".local" / "models" / "latest"  # `make demo` writes it and latest.pt
REVIEWS = [
    "The food was delicious and the staff were lovely, we will come back soon.",
    "Cold fries, rude cashier and a dirty table. Never again.",
    "Decent coffee but the pastries were stale and overpriced.",
    "Best tacos in town! The salsa bar is amazing.",
]


def staged_model(path: Path | None) -> tuple[Path, Path]:
    """(staged folder, PyTorch checkpoint of the same run): the given ones, the demo's, or freshly trained."""
    folder = path or DEFAULT_MODEL
    checkpoint = folder.with_suffix(".pt")
    if (folder / "model.onnx").is_file() and checkpoint.is_file():
        return folder, checkpoint
    folder = Path(tempfile.mkdtemp(prefix="bench-model-")) / "model"
    checkpoint = folder.with_suffix(".pt")
    print(f"no staged model with a checkpoint found; training one into {folder} (about 90 s) ...", flush=True)
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
            "--checkpoint",
            str(checkpoint),
        ],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder, checkpoint


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
