"""fastText-style classifier: mean of token and bigram embeddings, one linear layer, sigmoid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.preprocess import TOKEN_PATTERN, Vocabulary


class FastTextClassifier(nn.Module):
    """Id 0 is padding/unknown: EmbeddingBag leaves it out of the mean, and an empty bag gives zeros.

    With `feature_weights` ([V + 1], fixed, row 0 zero; e.g. idf) the bag is a weighted mean,
    sum(w_i e_i) / max(sum(w_i), 1): the exported graph computes it with the same nodes as the plain mean (its
    per-feature count of 1 becomes w_i), so the serving graph keeps its structure.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, feature_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        mode = "mean" if feature_weights is None else "sum"
        self.embedding = nn.EmbeddingBag(vocab_size + 1, embedding_dim, mode=mode, padding_idx=0, sparse=True)
        if feature_weights is not None and feature_weights.shape != (vocab_size + 1,):
            raise ValueError(f"feature_weights must have shape ({vocab_size + 1},)")
        self.feature_weights: torch.Tensor | None
        self.register_buffer(
            "feature_weights", None if feature_weights is None else feature_weights.float().clone(), persistent=True
        )
        self.linear = nn.Linear(embedding_dim, 1)
        nn.init.uniform_(self.embedding.weight, -1.0 / embedding_dim, 1.0 / embedding_dim)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Logits [B] for a flat id tensor and the offset where each bag starts."""
        if self.feature_weights is None:
            return self.linear(self.embedding(ids, offsets)).squeeze(-1)
        weights = self.feature_weights[ids]
        summed = self.embedding(ids, offsets, per_sample_weights=weights)
        lengths = torch.diff(offsets, append=torch.tensor([len(ids)], dtype=offsets.dtype))
        bags = torch.repeat_interleave(torch.arange(len(offsets)), lengths)
        total = torch.zeros(len(offsets), dtype=summed.dtype).index_add_(0, bags, weights)
        return self.linear(summed / total.clamp(min=1.0).unsqueeze(-1)).squeeze(-1)


def idf_weights(encoded: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """Smoothed inverse document frequency of ids 1..V over `encoded`, as scikit-learn's TfidfVectorizer:
    log((1 + n) / (1 + df)) + 1 (>= 1, so a text with a known feature divides by at least 1); row 0 is 0."""
    df = np.zeros(vocab_size + 1, dtype=np.float64)
    for ids in encoded:
        df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    weights = np.log((1 + len(encoded)) / (1 + df)) + 1
    weights[0] = 0.0
    return torch.from_numpy(weights.astype(np.float32))


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


def save_checkpoint(
    model: FastTextClassifier, features: Sequence[str], path: Path, token_pattern: str | None = None
) -> None:
    """The trained weights and the feature strings of ids 1..V; tensors and strings only (weights_only loads).
    A run with another Tokenizer regex (training --split-apostrophes) also stores it as token_pattern."""
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"state_dict": model.state_dict(), "vocabulary": list(features)}
    if token_pattern is not None:
        saved["token_pattern"] = token_pattern
    torch.save(saved, path)


def load_checkpoint(path: Path) -> tuple[FastTextClassifier, Vocabulary]:
    """(model in eval mode, its vocabulary with the Tokenizer regex it was trained with) from save_checkpoint's
    file."""
    saved = torch.load(path, weights_only=True)
    features = tuple(saved["vocabulary"])
    model = FastTextClassifier(
        len(features), saved["state_dict"]["embedding.weight"].shape[1], saved["state_dict"].get("feature_weights")
    )
    model.load_state_dict(saved["state_dict"])
    vocabulary = Vocabulary(features=features, token_pattern=saved.get("token_pattern", TOKEN_PATTERN))
    return model.eval(), vocabulary
