"""The drift rule on windows of labelled predictions: false alarms, detection, and the label-free accuracy estimate.

    .venv/bin/python bench/drift.py [--windows 1000] [--window-size 500] [--seed 13] [--model DIR]

The model (a staged folder with its reference.json: the one given, the demo's in .local/models/latest, or one
trained on the spot) answers every text once through predict's own call (`sentiment_core.onnx_model`), and each
answer is counted as predict counts it live (`MonitorCounts.of`). Windows are then drawn by index (numpy,
seeded; no text twice in a window) and judged by `sentiment_core.monitoring.assess` against the model's
reference, with the DRIFT_* settings of this environment (the defaults when unset):

- in-distribution: test texts at random. The split is training's own (same data, label rule and seed; the
  script checks that the reference recomputed on its validation part equals reference.json), and no window
  uses the validation part, which made the reference;
- positive share +15 / -15 points: test texts drawn by label, in the validation part's label share (the share
  behind the reference) plus or minus 15 points;
- half out of domain: half test texts, half movie review snippets (../shared/data/ood/vader_movie_snippets.tsv);
- extra, no target: all from DynaSent round 1 dev (Yelp sentences chosen because a strong model got them
  wrong); all whole reviews (the test texts from reviews.jsonl, whereas most of the data, and so of the
  reference, is single sentences).

Every window also compares the label-free accuracy estimate (`estimated_accuracy`, the mean confidence) with the
accuracy of the window's answers on its labels.

Targets (issue "Watch the model in production"): drift in <= 1% of in-distribution windows, and in >= 95% of the
windows of each shifted and half-out-of-domain case. When one is missed, the script tries each setting alone
over a range of values on the same windows, proposes the change that meets every target with the widest
margin, and checks it on fresh windows (another seed).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from _common import ModelError, monitored_model, percentile

from sentiment_core import onnx_model
from sentiment_core.contract import META_LABEL_RULE, META_TRAINING_DATA_SHA256, REFERENCE_FILENAME
from sentiment_core.manifest import read_staged_folder
from sentiment_core.monitoring import (
    LENGTH_BINS,
    PROBABILITY_BINS,
    Assessment,
    DriftSettings,
    MonitorCounts,
    Reference,
    Window,
    assess,
)
from training import data

OOD_DIR = data.REPO_ROOT.parent / "shared" / "data" / "ood"
MOVIES = OOD_DIR / "vader_movie_snippets.tsv"
DYNASENT = OOD_DIR / "dynasent_r1_dev.tsv"
SHIFT = 0.15
MAX_FALSE_ALARMS = 0.01
MIN_DETECTION = 0.95
BATCH = 2048
# training.train's default --seed (training.fit.HyperParams.seed, which would load torch to read); a model trained
# with another one is refused by check_reference, never measured on the wrong split.
TRAINING_SEED = 13


@dataclasses.dataclass(frozen=True)
class Scored:
    """Texts answered once by the model: per text its label, the answer, and what predict adds to its window."""

    labels: np.ndarray  # 1 positive, 0 negative
    answers: np.ndarray  # the model answered positive (probability >= the manifest's threshold)
    probability_bins: np.ndarray  # [N, PROBABILITY_BINS]: MonitorCounts.of(...).probability per text
    length_bins: np.ndarray  # [N, LENGTH_BINS]
    confidence: np.ndarray
    known_fraction: np.ndarray
    known_count: np.ndarray  # 1 where the model reported known_fraction

    @classmethod
    def of(cls, session, texts: Sequence[str], labels: Sequence[int], threshold: float) -> Scored:
        probabilities, known = [], []
        for start in range(0, len(texts), BATCH):
            p, k = onnx_model.probabilities_and_known(session, list(texts[start : start + BATCH]))
            probabilities.append(p)
            known.append(k)
        probability, fraction = np.concatenate(probabilities), np.concatenate(known)
        counted = [
            MonitorCounts.of(float(p), text, float(k), positive=bool(p >= threshold))
            for p, text, k in zip(probability, texts, fraction, strict=True)
        ]
        return cls(
            np.asarray(labels, dtype=np.int64),
            probability >= threshold,  # float32 against the float threshold, as predict compares
            np.array([c.probability for c in counted], dtype=np.int64).reshape(-1, PROBABILITY_BINS),
            np.array([c.length for c in counted], dtype=np.int64).reshape(-1, LENGTH_BINS),
            np.array([c.confidence_sum for c in counted]),
            np.array([c.known_fraction_sum for c in counted]),
            np.array([c.known_fraction_count for c in counted], dtype=np.int64),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Scored]) -> Scored:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))

    def __len__(self) -> int:
        return len(self.labels)

    def window(self, indices: np.ndarray) -> Window:
        """The window counter these predictions would add up to. Every text is labelled: as if every prediction
        got feedback, so the window's feedback accuracy is the true accuracy."""
        # The field-by-field sum of the texts' MonitorCounts (what MonitorCounts.__add__ does), in numpy.
        counts = MonitorCounts(
            tuple(int(n) for n in self.probability_bins[indices].sum(axis=0)),
            tuple(int(n) for n in self.length_bins[indices].sum(axis=0)),
            float(self.confidence[indices].sum()),
            float(self.known_fraction[indices].sum()),
            int(self.known_count[indices].sum()),
        )
        right = int(np.sum(self.answers[indices] == (self.labels[indices] == 1)))
        return Window(len(indices), int(self.answers[indices].sum()), len(indices), right, counts)


def draw(rng: np.random.Generator, parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Indices of one window: from each pool, that many indices, none twice."""
    return np.concatenate([rng.choice(pool, size, replace=False) for pool, size in parts])


def shifted_parts(
    positives: np.ndarray, negatives: np.ndarray, size: int, share: float
) -> list[tuple[np.ndarray, int]]:
    """A window of `size` texts whose labels are positive in `share` of them (rounded to a whole text)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"a positive share is in [0, 1], got {share:.3f}")
    wanted = round(size * share)
    return [(positives, wanted), (negatives, size - wanted)]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    parts: list[tuple[np.ndarray, int]]  # indices into the scored pool, and how many to draw from each
    drifted: bool | None  # whether drift should fire; None: an extra case, reported only

    @property
    def target(self) -> str:
        if self.drifted is None:
            return "no target"
        return f"drift >= {MIN_DETECTION:.0%}" if self.drifted else f"drift <= {MAX_FALSE_ALARMS:.0%}"

    def met(self, drift_rate: float) -> bool | None:
        if self.drifted is None:
            return None
        return drift_rate >= MIN_DETECTION if self.drifted else drift_rate <= MAX_FALSE_ALARMS


@dataclasses.dataclass
class Outcome:
    case: Case
    windows: list[Window]
    assessments: list[Assessment]
    label_shares: list[float]  # of each window's labels

    def drift_rate(self) -> float:
        return sum(a.drift for a in self.assessments) / len(self.assessments)

    def reasons(self) -> str:
        """Each reason with the share of windows it fired in (a window can have several)."""
        fired = collections.Counter(name for a in self.assessments for name in {r.split(" ", 1)[0] for r in a.reasons})
        return ", ".join(f"{name} {n / len(self.assessments):.1%}" for name, n in sorted(fired.items())) or "-"


def run_cases(
    cases: Sequence[Case], pool: Scored, reference: Reference, settings: DriftSettings, windows: int, seed: int
) -> list[Outcome]:
    outcomes = []
    for number, case in enumerate(cases):
        began = time.perf_counter()
        rng = np.random.default_rng([seed, number])
        indices = [draw(rng, case.parts) for _ in range(windows)]
        drawn = [pool.window(i) for i in indices]
        shares = [float(pool.labels[i].mean()) for i in indices]
        outcomes.append(Outcome(case, drawn, [assess(w, reference, settings) for w in drawn], shares))
        print(f"  {case.name}: {windows} windows in {time.perf_counter() - began:.1f} s", flush=True)
    return outcomes


def print_table(outcomes: Sequence[Outcome]) -> None:
    """The results, a Markdown table ready for docs/monitoring.md."""
    print(
        "| case | windows | label share | drift (target) | met | reasons (share of windows) | true accuracy | "
        "estimated | abs. estimate error mean / p95 |"
    )
    print("|---|---:|---:|---|---|---|---:|---:|---:|")
    for outcome in outcomes:
        windows = outcome.windows
        true = [w.feedback_accuracy for w in windows]
        estimated = [w.counts.estimated_accuracy() for w in windows]
        errors = [abs(e - t) for e, t in zip(estimated, true, strict=True)]
        met = outcome.case.met(outcome.drift_rate())
        verdict = "-" if met is None else "PASS" if met else "FAIL"
        print(
            f"| {outcome.case.name} | {len(windows):,} | {np.mean(outcome.label_shares):.3f} | "
            f"{outcome.drift_rate():.1%} ({outcome.case.target}) | {verdict} | {outcome.reasons()} | "
            f"{np.mean(true):.3f} | {np.mean(estimated):.3f} | {np.mean(errors):.3f} / {percentile(errors, 95):.3f} |"
        )


def print_statistics(outcomes: Sequence[Outcome], reference: Reference) -> None:
    """Where each statistic of the rule lies per case: its 1st, 5th, 50th and 99th percentile over the windows."""
    reference_unknown = reference.counts.unknown_token_rate() or 0.0
    statistics: dict[str, Callable[[Assessment], float]] = {
        "score_psi": lambda a: a.score_psi or 0.0,
        "length_psi": lambda a: a.length_psi or 0.0,
        "positive rate shift": lambda a: abs((a.window.positive_rate or 0.0) - reference.positive_rate),
        "unknown-token increase": lambda a: (a.window.counts.unknown_token_rate() or 0.0) - reference_unknown,
    }
    print("| case | " + " | ".join(statistics) + " |")
    print("|---|" + "---:|" * len(statistics))
    for outcome in outcomes:
        cells = []
        for get in statistics.values():
            values = [get(a) for a in outcome.assessments]
            cells.append(" / ".join(f"{percentile(values, q):.3f}" for q in (1, 5, 50, 99)))
        print(f"| {outcome.case.name} | " + " | ".join(cells) + " |")


# One setting at a time, over these values (the others at the settings in use).
SWEEP = {
    "max_psi": [round(0.05 + 0.025 * i, 3) for i in range(19)],
    "max_positive_rate_shift": [round(0.05 + 0.005 * i, 3) for i in range(19)],
    "max_unknown_token_increase": [round(0.02 + 0.01 * i, 3) for i in range(19)],
}


def rates(outcomes: Sequence[Outcome], reference: Reference, settings: DriftSettings) -> list[float]:
    """The drift rate of each targeted case under other settings, on the same windows, by `assess`."""
    return [
        sum(assess(w, reference, settings).drift for w in o.windows) / len(o.windows)
        for o in outcomes
        if o.case.drifted is not None
    ]


def margin(cases: Sequence[Case], drift_rates: Sequence[float]) -> float:
    """The smallest distance to a target, in points of drift rate: negative when one is missed."""
    targeted = [c for c in cases if c.drifted is not None]
    return min(
        r - MIN_DETECTION if c.drifted else MAX_FALSE_ALARMS - r for c, r in zip(targeted, drift_rates, strict=True)
    )


def sweep(outcomes: Sequence[Outcome], reference: Reference, settings: DriftSettings) -> DriftSettings | None:
    """Print the drift rates of each single change; return the one meeting every target with the widest margin
    (None when none does)."""
    cases = [o.case for o in outcomes]
    targeted = [c.name for c in cases if c.drifted is not None]
    print("| setting | " + " | ".join(targeted) + " | meets all |")
    print("|---|" + "---:|" * len(targeted) + "---|")
    best: tuple[float, DriftSettings] | None = None
    for name, values in SWEEP.items():
        for value in values:
            candidate = dataclasses.replace(settings, **{name: value})
            drift_rates = rates(outcomes, reference, candidate)
            slack = margin(cases, drift_rates)
            print(
                f"| {name} {value:g}{' (in use)' if getattr(settings, name) == value else ''} | "
                + " | ".join(f"{r:.1%}" for r in drift_rates)
                + f" | {'yes' if slack >= 0 else 'no'} |"
            )
            if slack >= 0 and (best is None or slack > best[0]):
                best = (slack, candidate)
    return None if best is None else best[1]


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """An out-of-domain file: header `label<TAB>text`, label 1 positive, 0 negative (its PROVENANCE.md)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, dialect="excel-tab"))
    if not rows or rows[0] != ["label", "text"]:
        raise ModelError(f"{path} does not start with the header label<TAB>text")
    body = [(text.strip(), int(label)) for label, text in rows[1:] if text.strip()]
    return [t for t, _ in body], [y for _, y in body]


def load_model(folder: Path) -> tuple[object, float, Reference, dict[str, str]]:
    """The staged model's session, threshold, reference and metadata; checks sha256s against the manifest."""
    manifest, model_bytes = read_staged_folder(folder)  # checks model.onnx and reference.json against it
    reference = Reference.from_dict(json.loads((folder / REFERENCE_FILENAME).read_bytes()))
    session = onnx_model.open_session(model_bytes)
    if not onnx_model.has_known_fraction(session):
        raise ModelError(f"{folder} has no known_fraction output: retrain it with `python -m training.train`")
    return session, manifest.threshold, reference, dict(session.get_modelmeta().custom_metadata_map)


def label_rule_of(metadata: dict[str, str]) -> data.LabelRule:
    rule = metadata.get(META_LABEL_RULE, "")
    try:
        return data.LabelRule(float(rule.removeprefix("stars>=")))
    except ValueError:
        raise ModelError(f"the model's label rule {rule!r} is not of the form stars>=N") from None


def check_reference(reference: Reference, validation: Scored, dataset: data.Dataset, metadata: dict[str, str]) -> None:
    """The reference must be this split's validation part: then the test part is the one training held out."""
    counts = validation.window(np.arange(len(validation))).counts
    if (counts.probability, counts.length, int(validation.answers.sum())) == (
        reference.counts.probability,
        reference.counts.length,
        reference.positive,
    ):
        return
    hint = ""
    if metadata.get(META_TRAINING_DATA_SHA256) != dataset.sha256:
        hint = " The model was trained on other data (its training_data_sha256 differs): pass it with --data."
    raise ModelError(
        "the reference.json of the model was not computed on this split's validation part, so its test part may "
        f"hold texts the model trained on; pass the data and --split-seed it was trained with.{hint}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=1000, help="windows per case (default: %(default)s)")
    parser.add_argument("--window-size", type=int, default=500, help="predictions per window (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the window draws (default: %(default)s)")
    parser.add_argument(
        "--model", type=Path, help="staged folder with reference.json (default: .local/models/latest, else trained)"
    )
    parser.add_argument("--data", action="append", help="the model's training data, as training.train --data")
    parser.add_argument(
        "--split-seed", type=int, default=TRAINING_SEED, help="the model's training seed (default: %(default)s)"
    )
    parser.add_argument(
        "--sweep",
        choices=("auto", "always", "never"),
        default="auto",
        help="try each setting alone over a range of values: when a target is missed, always or never "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    if args.windows < 1 or args.window_size < 2:
        parser.error("--windows must be at least 1 and --window-size at least 2")
    try:
        return run(args)
    except (ModelError, data.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    folder = monitored_model(args.model)
    session, threshold, reference, metadata = load_model(folder)
    settings = DriftSettings.from_env(os.environ)  # as the functions read them: the defaults if unset
    print(f"model: {folder} (threshold {threshold:g})\nsettings: {settings}", flush=True)

    dataset = data.load_dataset(args.data, label_rule_of(metadata))
    split = data.stratified_split(
        dataset.labels, val_fraction=0.1, test_fraction=0.1, seed=args.split_seed, texts=dataset.texts
    )
    print(f"data: {len(dataset.texts):,} texts, split {split.sizes()} (seed {split.seed})", flush=True)
    labels = np.asarray(dataset.labels)
    validation = Scored.of(
        session, data.take(dataset.texts, split.validation), labels[split.validation].tolist(), threshold
    )
    check_reference(reference, validation, dataset, metadata)
    share = float(validation.labels.mean())
    print(
        f"reference: {reference.predictions:,} validation texts (checked), label share {share:.3f}, "
        f"positive answers {reference.positive_rate:.3f}",
        flush=True,
    )

    test = Scored.of(session, data.take(dataset.texts, split.test), labels[split.test].tolist(), threshold)
    movies = Scored.of(session, *read_tsv(MOVIES), threshold)
    dynasent = Scored.of(session, *read_tsv(DYNASENT), threshold)
    pool = Scored.concatenate([test, movies, dynasent])
    print(f"scored {len(test):,} test, {len(movies):,} movie and {len(dynasent):,} DynaSent texts", flush=True)
    offsets = np.cumsum([0, len(test), len(movies), len(dynasent)])
    test_ids, movie_ids, dynasent_ids = (np.arange(offsets[i], offsets[i + 1]) for i in range(3))
    positives, negatives = test_ids[test.labels == 1], test_ids[test.labels == 0]
    # load_dataset appends each source's texts in turn: the reviews file's are the first ones it used.
    reviews = [r for r in dataset.reports if Path(r.uri).name.startswith("reviews.")]
    first = sum(r.used for r in dataset.reports[: dataset.reports.index(reviews[0])]) if reviews else 0
    whole_ids = test_ids[[first <= i < first + reviews[0].used for i in split.test]] if reviews else test_ids[:0]

    size = args.window_size
    half = size // 2
    if size > min(len(positives), len(negatives), len(movie_ids), len(dynasent_ids)):
        raise ModelError(f"--window-size {size} is larger than a pool to draw from")

    def by_label(wanted: float) -> list[tuple[np.ndarray, int]]:
        return shifted_parts(positives, negatives, size, wanted)

    cases = [
        Case("in-distribution (Yelp test)", [(test_ids, size)], drifted=False),
        *(
            Case(f"positive share {sign}{round(SHIFT * 100)} points", by_label(share + s * SHIFT), True)
            for sign, s in (("+", 1), ("-", -1))
        ),
        Case("half movie snippets (VADER)", [(test_ids, size - half), (movie_ids, half)], drifted=True),
        Case("all DynaSent r1 (extra)", [(dynasent_ids, size)], drifted=None),
    ]
    if len(whole_ids) >= size:
        cases.append(Case("all whole reviews, Yelp test (extra)", [(whole_ids, size)], drifted=None))
    print(f"drawing {args.windows:,} windows of {size} per case (seed {args.seed}) ...", flush=True)
    outcomes = run_cases(cases, pool, reference, settings, args.windows, args.seed)
    print()
    print_table(outcomes)
    print()
    print("Each statistic's 1st / 5th / 50th / 99th percentile over the windows:\n")
    print_statistics(outcomes, reference)
    print()
    met = all(o.case.met(o.drift_rate()) is not False for o in outcomes)
    for outcome in outcomes:
        if outcome.case.drifted is not None:
            verdict = "PASS" if outcome.case.met(outcome.drift_rate()) else "FAIL"
            print(f"{verdict}: {outcome.case.name}: drift in {outcome.drift_rate():.1%} ({outcome.case.target})")
    if args.sweep == "always" or (args.sweep == "auto" and not met):
        print(f"\n{'Every target is met' if met else 'A target is missed'}. Each setting alone, on the same windows:\n")
        proposal = sweep(outcomes, reference, settings)
        if not met:
            propose(proposal, settings, cases, pool, reference, args)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 0 if met else 1


def propose(
    proposal: DriftSettings | None,
    settings: DriftSettings,
    cases: Sequence[Case],
    pool: Scored,
    reference: Reference,
    args: argparse.Namespace,
) -> None:
    """Name the change the sweep found and measure it on fresh windows (a sweep's best is flattered by its own)."""
    if proposal is None:
        print("\nNo single change meets every target.")
        return
    changed = {
        f.name: getattr(proposal, f.name)
        for f in dataclasses.fields(proposal)
        if getattr(proposal, f.name) != getattr(settings, f.name)
    }
    print(f"\nproposed: {changed} (every target met, widest margin); on fresh windows (seed {args.seed + 1}):\n")
    print_table(run_cases(cases, pool, reference, proposal, args.windows, args.seed + 1))


if __name__ == "__main__":
    raise SystemExit(main())
