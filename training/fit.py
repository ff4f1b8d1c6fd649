"""The training loop, free of I/O: ids and labels in, a trained model and per-epoch metrics out."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.evaluate import binary_metrics
from training.model import FastTextClassifier, idf_weights, pack, predict_proba
from training.preprocess import SPLIT_APOSTROPHES_PATTERN, TOKEN_PATTERN


@dataclasses.dataclass(frozen=True)
class HyperParams:
    """Everything that changes the trained weights; logged as MLflow params."""

    # The defaults are trial 53 of the search in docs/model-card.md ("Hyper-parameter search"), to the digit, with
    # `ensemble` 3 added: the search ran single models (`--ensemble 1` in its command reproduces the trial itself).
    embedding_dim: int = 16
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.003182132360433181
    lr_decay: float = 0.41692371577404763
    min_count: int = 3
    max_features: int = 500_000
    seed: int = 13
    # Levers for out-of-domain text (docs/model-card.md, "Out-of-domain accuracy: what we tried").
    weight_decay: float = 0.009023356917511199
    label_smoothing: float = 0.0076482372260345925
    feature_dropout: float = 0.006204802804333313
    review_weight: float = 1.4330830766048026
    tense_copy_weight: float = 0.5485069190413843  # loss weight of a tense copy (--tense-copies) against its original
    feedback_weight: float = 1.0  # loss weight of an example of a feedback source (users' answers)
    idf_weighting: bool = False
    balance_classes: bool = True
    split_apostrophes: bool = True  # a preprocessing choice: training.preprocess.SPLIT_APOSTROPHES_PATTERN
    ensemble: int = 3  # models trained side by side (seeds seed + 1000 i), averaged into one: see fit.average

    @property
    def token_pattern(self) -> str:
        """The Tokenizer regex of this run (the exported graph carries it)."""
        return SPLIT_APOSTROPHES_PATTERN if self.split_apostrophes else TOKEN_PATTERN

    def __post_init__(self) -> None:
        if self.weight_decay < 0.0:
            raise ValueError("weight_decay must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError("feature_dropout must be in [0, 1)")
        if self.review_weight <= 0.0:
            raise ValueError("review_weight must be > 0")
        if self.tense_copy_weight <= 0.0:
            raise ValueError("tense_copy_weight must be > 0")
        if self.feedback_weight <= 0.0:
            raise ValueError("feedback_weight must be > 0")
        if self.ensemble < 1:
            raise ValueError("ensemble must be >= 1")


EpochCallback = Callable[[int, dict[str, float]], None]


def set_seed(seed: int) -> None:
    """Seed every generator the loop touches; same seed, same metrics."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def smooth_targets(labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Binary label smoothing: 1 -> 1 - s/2 and 0 -> s/2, so the loss stops pushing logits to infinity."""
    return labels * (1.0 - label_smoothing) + 0.5 * label_smoothing


def drop_features(batch: Sequence[Sequence[int]], rate: float, generator: torch.Generator) -> list[list[int]]:
    """Each feature id kept with probability 1 - rate (training only): the model cannot lean on a few features.

    The bag is a mean, so no rescaling is needed; a text whose every feature is dropped becomes an empty bag,
    as an all-unknown text is at serving time.
    """
    lengths = [len(ids) for ids in batch]
    keep = (torch.rand(sum(lengths), generator=generator) >= rate).tolist()
    kept, start = [], 0
    for ids, length in zip(batch, lengths, strict=True):
        flags = keep[start : start + length]
        kept.append([i for i, k in zip(ids, flags, strict=True) if k])
        start += length
    return kept


MEMBER_SEED_STRIDE = 1000  # member i's seed is params.seed + 1000 i: no stream of one member is another's

# Decoupled decay touches the whole table (about 10^5 rows): batching it over a few steps keeps its cost small.
DECAY_EVERY = 16


@torch.no_grad()
def decay(weight: torch.Tensor, factor: float) -> None:
    """Decoupled weight decay (AdamW's), which SparseAdam lacks: every row shrinks, rare features too (a lazy
    decay of only the rows a batch uses would leave the rare, overfitting ones almost untouched). Row 0
    (unknown) is zero and stays zero."""
    weight.mul_(factor)


def example_weights(
    labels: torch.Tensor,
    is_review: Sequence[bool] | None,
    params: HyperParams,
    is_tense_copy: Sequence[bool] | None = None,
    is_feedback: Sequence[bool] | None = None,
) -> torch.Tensor | None:
    """Loss weight of each training example, or None when all weigh 1 (the unweighted loss).

    review_weight multiplies full reviews against sentences, tense_copy_weight the tense copies against the
    rest and feedback_weight the examples of feedback sources; balance_classes then scales each class so both
    carry the same total weight (the training data is 60 % positive; the out-of-domain sets are balanced).
    """
    copy_weighted = params.tense_copy_weight != 1.0 and is_tense_copy is not None and any(is_tense_copy)
    feedback_weighted = params.feedback_weight != 1.0 and is_feedback is not None and any(is_feedback)
    if params.review_weight == 1.0 and not params.balance_classes and not copy_weighted and not feedback_weighted:
        return None
    weights = torch.ones_like(labels)
    if params.review_weight != 1.0:
        if is_review is None:
            raise ValueError("review_weight needs train_is_review")
        weights = torch.where(torch.tensor(list(is_review), dtype=torch.bool), params.review_weight, 1.0)
    if copy_weighted:
        copies = torch.tensor(list(is_tense_copy), dtype=torch.bool)
        weights = torch.where(copies, weights * params.tense_copy_weight, weights)
    if feedback_weighted:
        feedback = torch.tensor(list(is_feedback), dtype=torch.bool)
        weights = torch.where(feedback, weights * params.feedback_weight, weights)
    if params.balance_classes:
        positive = labels >= 0.5
        total = weights.sum()
        for members in (positive, ~positive):
            if members.any():
                weights = torch.where(members, weights * (total / 2) / weights[members].sum(), weights)
    return weights


def fit(
    train_ids: Sequence[Sequence[int]],
    train_labels: Sequence[int],
    val_ids: Sequence[Sequence[int]],
    val_labels: Sequence[int],
    *,
    vocab_size: int,
    params: HyperParams,
    train_is_review: Sequence[bool] | None = None,
    train_is_tense_copy: Sequence[bool] | None = None,
    train_is_feedback: Sequence[bool] | None = None,
    threshold: float = 0.5,
    watch: Mapping[str, tuple[Sequence[Sequence[int]], Sequence[int]]] | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> tuple[FastTextClassifier, list[dict[str, float]]]:
    """Train with Adam and a per-epoch learning-rate decay.

    Returns the weights of the epoch with the best validation ROC AUC (later epochs overfit on this data) and
    every epoch's metrics, the chosen one marked with best_epoch. `train_is_review` marks full reviews (the
    rest are sentences) for params.review_weight, `train_is_tense_copy` the tense copies for
    params.tense_copy_weight, `train_is_feedback` the examples of feedback sources for params.feedback_weight
    (see example_weights). train_loss and train_accuracy are
    measured against the smoothed targets and weights the loop optimises. Each `watch` set (name -> ids,
    labels) adds its accuracy per epoch as `<name>_accuracy`; it never chooses the epoch.
    """
    set_seed(params.seed)
    feature_weights = idf_weights(train_ids, vocab_size) if params.idf_weighting else None
    members = [_Member.create(i, vocab_size, params, feature_weights) for i in range(params.ensemble)]
    labels = torch.tensor(train_labels, dtype=torch.float32)
    targets = smooth_targets(labels, params.label_smoothing) if params.label_smoothing else labels
    weights = example_weights(labels, train_is_review, params, train_is_tense_copy, train_is_feedback)
    val_y = np.asarray(val_labels)
    history = []
    model = average(member.model for member in members)
    best_auc, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, params.epochs + 1):
        seen = correct = 0
        total_loss = 0.0
        for member in members:
            label = f"epoch {epoch}/{params.epochs}" + (
                f", member {member.index + 1}/{len(members)}" * (len(members) > 1)
            )
            loss, right = member.train_epoch(train_ids, targets, weights, params, label=label, progress=progress)
            seen += len(train_ids)
            total_loss += loss
            correct += right
        model = average(member.model for member in members)
        val = binary_metrics(val_y, predict_proba(model, val_ids), threshold)
        record = {
            "train_loss": total_loss / seen,
            "train_accuracy": correct / seen,
            **{f"val_{name}": value for name, value in val.items()},
        }
        for name, (ids, y) in (watch or {}).items():
            record[f"{name}_accuracy"] = float(np.mean((predict_proba(model, ids) >= threshold) == np.asarray(y)))
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


@dataclasses.dataclass
class _Member:
    """One model of the ensemble with its optimisers and random streams. Member 0 is seeded exactly as a single
    model was (params.seed), so an ensemble of one trains the same weights."""

    index: int
    model: FastTextClassifier
    optimizers: list[torch.optim.Optimizer]
    schedules: list[torch.optim.lr_scheduler.LRScheduler]
    generator: torch.Generator
    dropout_generator: torch.Generator

    @classmethod
    def create(cls, index: int, vocab_size: int, params: HyperParams, feature_weights: torch.Tensor | None) -> _Member:
        seed = params.seed + MEMBER_SEED_STRIDE * index
        if index:
            torch.manual_seed(seed)
        model = FastTextClassifier(vocab_size, params.embedding_dim, feature_weights)
        # Sparse updates touch only the rows a batch uses: about 20x faster than dense Adam on a 10^5-row table.
        optimizers: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam(list(model.embedding.parameters()), lr=params.learning_rate),
            torch.optim.Adam(model.linear.parameters(), lr=params.learning_rate),
        ]
        schedules = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=params.lr_decay) for o in optimizers]
        # A generator of its own, so turning dropout on does not shift the shuffling of the default run.
        return cls(
            index,
            model,
            optimizers,
            schedules,
            torch.Generator().manual_seed(seed),
            torch.Generator().manual_seed(seed + 1),
        )

    def train_epoch(
        self,
        train_ids: Sequence[Sequence[int]],
        targets: torch.Tensor,
        weights: torch.Tensor | None,
        params: HyperParams,
        *,
        label: str,
        progress: bool,
    ) -> tuple[float, int]:
        """One pass in a fresh order; (summed loss, examples answered right), against the targets optimised."""
        model = self.model
        model.train()
        order = torch.randperm(len(train_ids), generator=self.generator).tolist()
        loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
        seen = correct = 0
        total_loss = 0.0
        bar = tqdm(
            range(0, len(order), params.batch_size),
            desc=label,
            unit="batch",
            disable=not progress,
            leave=True,
            mininterval=0.5,
        )
        for step, start in enumerate(bar):
            rows = order[start : start + params.batch_size]
            batch = [train_ids[i] for i in rows]
            if params.feature_dropout:
                batch = drop_features(batch, params.feature_dropout, self.dropout_generator)
            ids, offsets = pack(batch)
            target = targets[rows]
            logits = model(ids, offsets)
            if weights is None:
                loss = loss_fn(logits, target)
            else:
                loss = nn.functional.binary_cross_entropy_with_logits(logits, target, weights[rows], reduction="sum")
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            (loss / len(rows)).backward()
            for optimizer in self.optimizers:
                optimizer.step()
            if params.weight_decay and (step + 1) % DECAY_EVERY == 0:
                factor = (1.0 - self.schedules[0].get_last_lr()[0] * params.weight_decay) ** DECAY_EVERY
                decay(model.embedding.weight, factor)
            seen += len(rows)
            total_loss += loss.item()
            correct += int(((logits >= 0) == (target >= 0.5)).sum())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        bar.close()
        for schedule in self.schedules:
            schedule.step()
        return total_loss, correct


@torch.no_grad()
def average(models: Iterable[FastTextClassifier]) -> FastTextClassifier:
    """One model whose logit is the mean of the models' logits: their embeddings side by side and their linear
    layers divided by their number. The bag is linear, so the ensemble is again a bag of features with one score
    each once exported (training.export folds the linear layer): same graph, same size, exact explanations."""
    models = list(models)
    if len(models) == 1:
        return models[0]
    first = models[0]
    combined = FastTextClassifier(
        first.embedding.num_embeddings - 1, sum(m.embedding.embedding_dim for m in models), first.feature_weights
    )
    combined.embedding.weight.copy_(torch.cat([m.embedding.weight for m in models], dim=1))
    combined.linear.weight.copy_(torch.cat([m.linear.weight for m in models], dim=1) / len(models))
    combined.linear.bias.copy_(torch.stack([m.linear.bias for m in models]).mean(dim=0))
    return combined
