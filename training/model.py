"""fastText-style classifier: mean of token and bigram embeddings, one linear layer, sigmoid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


class FastTextClassifier(nn.Module):
    """Id 0 is padding/unknown: EmbeddingBag leaves it out of the mean, and an empty bag gives zeros."""

    def __init__(self, vocab_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size + 1, embedding_dim, mode="mean", padding_idx=0, sparse=True)
        self.linear = nn.Linear(embedding_dim, 1)
        nn.init.uniform_(self.embedding.weight, -1.0 / embedding_dim, 1.0 / embedding_dim)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Logits [B] for a flat id tensor and the offset where each bag starts."""
        return self.linear(self.embedding(ids, offsets)).squeeze(-1)


def pack(batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ids and offsets, EmbeddingBag's input format."""
    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
    offsets = np.zeros(len(batch), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    flat = np.fromiter((i for ids in batch for i in ids), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(flat), torch.from_numpy(offsets)


@torch.no_grad()
def predict_logits(model: FastTextClassifier, encoded: Sequence[Sequence[int]], batch_size: int = 4096) -> np.ndarray:
    """Logits of the positive class, float32, in input order."""
    model.eval()
    out = np.empty(len(encoded), dtype=np.float32)
    for start in range(0, len(encoded), batch_size):
        ids, offsets = pack(encoded[start : start + batch_size])
        out[start : start + len(offsets)] = model(ids, offsets).numpy()
    return out


def predict_proba(model: FastTextClassifier, encoded: Sequence[Sequence[int]], batch_size: int = 4096) -> np.ndarray:
    """Probabilities of the positive class, float32, in input order."""
    return torch.sigmoid(torch.from_numpy(predict_logits(model, encoded, batch_size))).numpy()


@torch.no_grad()
def scale_logits(model: FastTextClassifier, factor: float) -> None:
    """Multiply the model's logits by `factor` (temperature scaling by 1/T), in place: the linear layer is the
    only place the logit is made, so the exported graph carries the calibration with no extra node."""
    model.linear.weight.mul_(factor)
    model.linear.bias.mul_(factor)


def save_checkpoint(model: FastTextClassifier, features: Sequence[str], path: Path) -> None:
    """The trained weights and the feature strings of ids 1..V; tensors and strings only (weights_only loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "vocabulary": list(features)}, path)


def load_checkpoint(path: Path) -> tuple[FastTextClassifier, tuple[str, ...]]:
    """(model in eval mode, feature strings) from save_checkpoint's file."""
    saved = torch.load(path, weights_only=True)
    features = tuple(saved["vocabulary"])
    model = FastTextClassifier(len(features), saved["state_dict"]["embedding.weight"].shape[1])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), features
