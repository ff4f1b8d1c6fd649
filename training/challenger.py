"""Champion/challenger: a newly registered version against the one the alias `production` points at.

Both exported graphs answer the same texts: the in-domain test split (`test`), every out-of-domain development
set (`ood_<stem>`) and the feedback examples that fell in the test split (`feedback`, never trained on). Per set,
the paired exact McNemar test: of the texts exactly one model answers right, is the share the challenger wins
different from one half? That is a two-sided binomial test on the discordant pairs (scipy.stats.binomtest), the
exact form of McNemar's test, right for the small counts the feedback set has.

The challenger beats the champion when it is better on at least one set (Holm-adjusted p < 0.05 over the sets:
several sets must not make a chance win likelier) and worse on none (the set's own p < 0.05: a regression vetoes
on its own evidence). `decide` turns the per-set results and AUTO_PROMOTE into what to do; `judge` logs the
report before the version is registered with its tags `challenger_of` and `beats_champion`, and with
AUTO_PROMOTE=canary and a win `promote_if_decided` sets the tag `promotion=automatic` and then the alias (the
rollout guards it).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import binomtest

from sentiment_core.contract import (
    BEATS_CHAMPION_TAG,
    CHALLENGER_OF_TAG,
    META_THRESHOLD,
    MODEL_NAME,
    PRODUCTION_ALIAS,
    PROMOTION_TAG,
)
from training import data

ALPHA = 0.05
TEST_SET = "test"
FEEDBACK_SET = "feedback"
OOD_PREFIX = "ood_"
REPORT_JSON = "challenger/report.json"
REPORT_MD = "challenger/report.md"
ACCURACY_PNG = "challenger/accuracy.png"
TAG_CHALLENGER_OF = CHALLENGER_OF_TAG
TAG_BEATS_CHAMPION = BEATS_CHAMPION_TAG
TAG_PROMOTION = PROMOTION_TAG
AUTOMATIC = "automatic"


class AutoPromote(enum.Enum):
    """AUTO_PROMOTE: what a challenger that beats the champion gets."""

    NEVER = "never"  # a person promotes (the default)
    CANARY = "canary"  # the alias production, so the progressive rollout guards it with live evidence

    @classmethod
    def parse(cls, text: str) -> AutoPromote:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ValueError(f"AUTO_PROMOTE must be one of {choices}, got {text!r}") from None


class Verdict(enum.Enum):
    BETTER = "better"
    WORSE = "worse"
    NO_DIFFERENCE = "no significant difference"


@dataclasses.dataclass(frozen=True)
class SetResult:
    """Both models on one set, paired text by text."""

    name: str
    n: int
    champion_correct: int
    challenger_correct: int
    champion_only: int  # b: texts only the champion answers right
    challenger_only: int  # c: texts only the challenger answers right
    p_value: float
    # Holm's adjustment over all the sets of one comparison (holm()): a win is claimed on it, so that judging on
    # several sets does not make a chance win on one of them likelier. None: not adjusted (one set alone).
    p_holm: float | None = None

    @property
    def champion_accuracy(self) -> float:
        return self.champion_correct / self.n

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_correct / self.n

    def verdict(self, alpha: float = ALPHA) -> Verdict:
        """BETTER needs the Holm-adjusted p under alpha; WORSE only the set's own p: a claim of improvement is
        held to the family-wise error rate, a regression vetoes on the evidence of its set alone (the safe side)."""
        if self.challenger_only == self.champion_only:
            return Verdict.NO_DIFFERENCE
        if self.challenger_only > self.champion_only:
            better = (self.p_holm if self.p_holm is not None else self.p_value) < alpha
            return Verdict.BETTER if better else Verdict.NO_DIFFERENCE
        return Verdict.WORSE if self.p_value < alpha else Verdict.NO_DIFFERENCE

    def to_dict(self, alpha: float = ALPHA) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "verdict": self.verdict(alpha).value,
        }


def mcnemar_exact(champion_only: int, challenger_only: int) -> float:
    """Two-sided p-value of the exact McNemar test: the discordant pairs as a binomial test against one half."""
    discordant = champion_only + challenger_only
    if discordant == 0:
        return 1.0
    return float(binomtest(challenger_only, discordant, 0.5, alternative="two-sided").pvalue)


def holm(results: Sequence[SetResult]) -> list[SetResult]:
    """The results with Holm's step-down adjusted p-values (family-wise error rate over the sets), in their order.

    By hand: scipy adjusts only for the false discovery rate (false_discovery_control), and statsmodels'
    multipletests is one function of a large dependency."""
    order = sorted(range(len(results)), key=lambda i: results[i].p_value)
    adjusted = [0.0] * len(results)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(results) - rank) * results[i].p_value))
        adjusted[i] = running
    return [dataclasses.replace(r, p_holm=p) for r, p in zip(results, adjusted, strict=True)]


def compare(name: str, labels: Sequence[int], champion: Sequence[int], challenger: Sequence[int]) -> SetResult:
    """The paired comparison of two models' predicted labels on one labelled set."""
    if not len(labels) or not (len(labels) == len(champion) == len(challenger)):
        raise ValueError(f"set {name}: {len(labels)} labels, {len(champion)} and {len(challenger)} predictions")
    truth = np.asarray(labels)
    champion_right = np.asarray(champion) == truth
    challenger_right = np.asarray(challenger) == truth
    b = int(np.sum(champion_right & ~challenger_right))
    c = int(np.sum(challenger_right & ~champion_right))
    return SetResult(
        name=name,
        n=len(truth),
        champion_correct=int(champion_right.sum()),
        challenger_correct=int(challenger_right.sum()),
        champion_only=b,
        challenger_only=c,
        p_value=mcnemar_exact(b, c),
    )


@dataclasses.dataclass(frozen=True)
class Decision:
    beats_champion: bool
    promote: bool
    reason: str


def decide(results: Sequence[SetResult], auto_promote: AutoPromote, alpha: float = ALPHA) -> Decision:
    """Beats = significantly better on at least one set and significantly worse on none; promote only then, and
    only with AUTO_PROMOTE=canary."""
    verdicts = {r.name: r.verdict(alpha) for r in results}
    worse = [name for name, v in verdicts.items() if v is Verdict.WORSE]
    better = [name for name, v in verdicts.items() if v is Verdict.BETTER]
    if worse:
        return Decision(False, False, f"significantly worse on {', '.join(worse)}")
    if not better:
        return Decision(False, False, "significantly better on no set")
    beats = f"significantly better on {', '.join(better)}, worse on none"
    if auto_promote is AutoPromote.CANARY:
        return Decision(True, True, beats + ": promoted (AUTO_PROMOTE=canary)")
    return Decision(True, False, beats + ": not promoted (AUTO_PROMOTE=never)")


def report(
    results: Sequence[SetResult], decision: Decision, champion_version: str, challenger_version: str | None
) -> dict[str, Any]:
    """challenger/report.json."""
    return {
        "champion_version": champion_version,
        "challenger_version": challenger_version,
        "test": "exact McNemar (two-sided binomial test on the discordant pairs)",
        "alpha": ALPHA,
        "sets": [r.to_dict() for r in results],
        "beats_champion": decision.beats_champion,
        "promote": decision.promote,
        "reason": decision.reason,
    }


def report_markdown(
    results: Sequence[SetResult], decision: Decision, champion_version: str, challenger_version: str | None
) -> str:
    """challenger/report.md: one row per set."""
    lines = [
        f"# Challenger {challenger_version or '(this run)'} against champion {champion_version}",
        "",
        f"Exact McNemar test per set (two-sided binomial test on the discordant pairs), alpha {ALPHA}. "
        "b: texts only the champion answers right; c: only the challenger. Better needs Holm's adjusted p (over "
        "the sets) under alpha; worse, the set's own p.",
        "",
        "| set | n | champion accuracy | challenger accuracy | discordant b/c | p-value | Holm p | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        holm_p = "" if r.p_holm is None else f"{r.p_holm:.4g}"
        lines.append(
            f"| {r.name} | {r.n} | {r.champion_accuracy:.4f} | {r.challenger_accuracy:.4f} | "
            f"{r.champion_only}/{r.challenger_only} | {r.p_value:.4g} | {holm_p} | {r.verdict().value} |"
        )
    lines += ["", f"beats_champion: {str(decision.beats_champion).lower()} ({decision.reason})", ""]
    return "\n".join(lines)


def accuracy_figure(results: Sequence[SetResult], champion_version: str, challenger_version: str | None) -> Figure:
    """Both models' accuracy per set, side by side, a star over a significant difference."""
    figure = Figure(figsize=(max(5.0, 1.4 * len(results) + 2), 4))
    axes = figure.subplots()
    positions = np.arange(len(results))
    width = 0.38
    champion = [r.champion_accuracy for r in results]
    axes.bar(positions - width / 2, champion, width, label=f"champion v{champion_version}")
    axes.bar(
        positions + width / 2,
        [r.challenger_accuracy for r in results],
        width,
        label=f"challenger v{challenger_version or '-'}",
    )
    for x, r in zip(positions, results, strict=True):
        if r.verdict() is not Verdict.NO_DIFFERENCE:
            axes.text(x, max(r.champion_accuracy, r.challenger_accuracy) + 0.01, "*", ha="center")
    axes.set_xticks(positions, [f"{r.name}\n(n={r.n})" for r in results])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy")
    axes.set_title(f"champion vs challenger (* p < {ALPHA}, exact McNemar)")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def evaluation_sets(
    dataset: data.Dataset, split: data.Split, ood: Mapping[str, data.LabelledTexts]
) -> dict[str, data.LabelledTexts]:
    """The sets both models answer: the test split, each ood set, and the test split's feedback examples."""
    sets = {TEST_SET: data.LabelledTexts(data.take(dataset.texts, split.test), data.take(dataset.labels, split.test))}
    sets.update({f"{OOD_PREFIX}{name}": texts for name, texts in ood.items()})
    flags = data.feedback_flags(dataset)
    feedback = [i for i in split.test if flags[i]]
    if feedback:
        sets[FEEDBACK_SET] = data.LabelledTexts(data.take(dataset.texts, feedback), data.take(dataset.labels, feedback))
    return sets


def model_threshold(model_bytes: bytes) -> float:
    """The decision threshold an exported model carries in its metadata."""
    import onnx

    props = {p.key: p.value for p in onnx.load_from_string(model_bytes).metadata_props}
    return float(props[META_THRESHOLD])


def predicted_labels(model_bytes: bytes, texts: Sequence[str], threshold: float) -> np.ndarray:
    from training import export

    return (export.onnx_probabilities(export.session(model_bytes), list(texts)) >= threshold).astype(int)


def compare_models(
    champion_bytes: bytes, challenger_bytes: bytes, challenger_threshold: float, sets: Mapping[str, data.LabelledTexts]
) -> list[SetResult]:
    """Each model at its own threshold on every set."""
    champion_threshold = model_threshold(champion_bytes)
    return holm(
        [
            compare(
                name,
                s.labels,
                predicted_labels(champion_bytes, s.texts, champion_threshold),
                predicted_labels(challenger_bytes, s.texts, challenger_threshold),
            )
            for name, s in sets.items()
        ]
    )


@dataclasses.dataclass(frozen=True)
class Champion:
    version: str
    model_bytes: bytes


def find_champion() -> Champion | None:
    """The version the alias production points at, with its model.onnx; None when there is none."""
    import tempfile
    from pathlib import Path

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        version = MlflowClient().get_model_version_by_alias(MODEL_NAME, PRODUCTION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        folder = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version.version}", dst_path=tmp)
        return Champion(str(version.version), (Path(folder) / "model.onnx").read_bytes())


@dataclasses.dataclass(frozen=True)
class Judged:
    """The champion a run was compared with, and the decision."""

    champion_version: str
    decision: Decision

    def version_tags(self) -> dict[str, str]:
        """Registered with the version, so that no version exists without them (contract names)."""
        return {
            TAG_CHALLENGER_OF: self.champion_version,
            TAG_BEATS_CHAMPION: str(self.decision.beats_champion).lower(),
        }


def judge(
    challenger_bytes: bytes,
    threshold: float,
    sets: Mapping[str, data.LabelledTexts],
    auto_promote: AutoPromote,
    log: Any = print,
) -> Judged | None:
    """In the active run, before the challenger is registered: compare with the champion, log the report.

    Before registration on purpose: if this fails (MLflow, the champion's download), no version is left without its
    tags, and the retrain check's retry does not add one more. None (nothing logged) without a production version.
    """
    import mlflow

    from training import tracking

    champion = find_champion()
    if champion is None:
        log("challenger: no production version to compare with")
        return None
    results = compare_models(champion.model_bytes, challenger_bytes, threshold, sets)
    decision = decide(results, auto_promote)
    mlflow.log_dict(report(results, decision, champion.version, None), REPORT_JSON)
    mlflow.log_text(report_markdown(results, decision, champion.version, None), REPORT_MD)
    tracking.log_figure(accuracy_figure(results, champion.version, None), ACCURACY_PNG)
    metrics = {}
    for r in results:
        metrics[f"challenger_{r.name}_accuracy"] = r.challenger_accuracy
        metrics[f"champion_{r.name}_accuracy"] = r.champion_accuracy
    mlflow.log_metrics(metrics)
    judged = Judged(champion.version, decision)
    mlflow.set_tags(judged.version_tags())
    for r in results:
        log(
            f"challenger: {r.name} (n={r.n}) champion {r.champion_accuracy:.4f}, challenger "
            f"{r.challenger_accuracy:.4f}, b/c {r.champion_only}/{r.challenger_only}, p {r.p_value:.3g}: "
            f"{r.verdict().value}"
        )
    log(f"challenger: beats_champion {str(decision.beats_champion).lower()} ({decision.reason})")
    return judged


def promote_if_decided(judged: Judged | None, version: str | None, log: Any = print) -> bool:
    """With AUTO_PROMOTE=canary and a win: the tag promotion=automatic, then the alias; whether it promoted."""
    if judged is None or version is None or not judged.decision.promote:
        return False
    from mlflow.tracking import MlflowClient

    from training import tracking

    # The tag first: whoever sees the alias move (the registry watcher) can tell the promotion was automatic.
    MlflowClient().set_model_version_tag(MODEL_NAME, version, TAG_PROMOTION, AUTOMATIC)
    tracking.promote(version)
    log(f"challenger: alias '{PRODUCTION_ALIAS}' -> {MODEL_NAME} version {version} (automatic)")
    return True


def summary(decision: Decision | None) -> dict[str, Any]:
    """The fields of training.train's summary line."""
    if decision is None:
        return {"beats_champion": None, "auto_promoted": False}
    return {"beats_champion": decision.beats_champion, "auto_promoted": decision.promote}
