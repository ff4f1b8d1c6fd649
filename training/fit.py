"""The training loop, free of I/O: ids and labels in, a trained model and per-epoch metrics out."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.evaluate import binary_metrics
from training.model import FastTextClassifier, pack, predict_proba


@dataclasses.dataclass(frozen=True)
class HyperParams:
    """Everything that changes the trained weights; logged as MLflow params."""

    embedding_dim: int = 32
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 0.004
    lr_decay: float = 0.7
    min_count: int = 2
    max_features: int = 250_000
    seed: int = 13


EpochCallback = Callable[[int, dict[str, float]], None]


def set_seed(seed: int) -> None:
    """Seed every generator the loop touches; same seed, same metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    train_ids: Sequence[Sequence[int]],
    train_labels: Sequence[int],
    val_ids: Sequence[Sequence[int]],
    val_labels: Sequence[int],
    *,
    vocab_size: int,
    params: HyperParams,
    threshold: float = 0.5,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> tuple[FastTextClassifier, list[dict[str, float]]]:
    """Train with Adam and a per-epoch learning-rate decay.

    Returns the weights of the epoch with the best validation ROC AUC (later epochs overfit on this data) and
    every epoch's metrics, the chosen one marked with best_epoch.
    """
    set_seed(params.seed)
    model = FastTextClassifier(vocab_size, params.embedding_dim)
    # Sparse updates touch only the rows a batch uses: about 20x faster than dense Adam on a 10^5-row table.
    optimizers = [
        torch.optim.SparseAdam(list(model.embedding.parameters()), lr=params.learning_rate),
        torch.optim.Adam(model.linear.parameters(), lr=params.learning_rate),
    ]
    schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=params.lr_decay) for o in optimizers]
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    labels = torch.tensor(train_labels, dtype=torch.float32)
    val_y = np.asarray(val_labels)
    generator = torch.Generator().manual_seed(params.seed)
    history = []
    best_auc, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(train_ids), generator=generator).tolist()
        seen = correct = 0
        total_loss = 0.0
        bar = tqdm(
            range(0, len(order), params.batch_size),
            desc=f"epoch {epoch}/{params.epochs}",
            unit="batch",
            disable=not progress,
            leave=True,
            mininterval=0.5,
        )
        for step, start in enumerate(bar):
            rows = order[start : start + params.batch_size]
            ids, offsets = pack([train_ids[i] for i in rows])
            target = labels[rows]
            logits = model(ids, offsets)
            loss = loss_fn(logits, target)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            (loss / len(rows)).backward()
            for optimizer in optimizers:
                optimizer.step()
            seen += len(rows)
            total_loss += loss.item()
            correct += int(((logits >= 0) == (target >= 0.5)).sum())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        bar.close()
        for schedule in schedules:
            schedule.step()
        val = binary_metrics(val_y, predict_proba(model, val_ids), threshold)
        record = {
            "train_loss": total_loss / seen,
            "train_accuracy": correct / seen,
            **{f"val_{name}": value for name, value in val.items()},
        }
        history.append(record)
        if record["val_roc_auc"] > best_auc:
            best_auc, best_state = record["val_roc_auc"], copy.deepcopy(model.state_dict())
            best_epoch = epoch
        record["best_epoch"] = best_epoch
        if on_epoch is not None:
            on_epoch(epoch, record)
    model.load_state_dict(best_state)
    model.eval()
    return model, history
