"""The behavioural suite: templated cases in the spirit of CheckList (Ribeiro et al., ACL 2020), run on the exported
graph by training, logged per capability, and bounded by the deploy gate (MIN_BEHAVIOUR_PASS_RATE).

Three kinds of case:
- minimum functionality (MFT): the answer must be the expected label;
- invariance (INV): an irrelevant change (a name, a place, a number, a typo) must not flip the answer;
- direction (DIR): an intensifier must not move the probability against its sentiment by more than a tolerance.

The cases are generated from fixed word lists with a fixed seed, so every run judges the same few hundred texts.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable, Sequence

SEED = 20_200_705  # CheckList's ACL 2020 date: the cases never change between runs
DIRECTION_TOLERANCE = 0.05  # a direction case fails only when the probability moves the wrong way by more

NOUNS = ("food", "service", "staff", "pizza", "coffee", "waiter", "place", "pasta", "atmosphere", "dessert")
PRAISE = ("great", "delicious", "friendly", "amazing", "excellent", "wonderful", "fantastic", "lovely", "tasty")
COMPLAINT = ("terrible", "awful", "rude", "bland", "disgusting", "horrible", "cold", "dirty", "overpriced")
NAMES = ("Maria", "John", "Aiko", "Oluwaseun", "Priya", "Lars", "Mohammed", "Chen")
PLACES = ("Phoenix", "Toronto", "Las Vegas", "Pittsburgh", "Montreal", "Charlotte", "Madison", "Cleveland")
INTENSIFIERS = ("very", "really", "extremely", "incredibly")
OPENINGS = (
    "We came here for dinner on a Friday night with a few friends from work.",
    "I stopped by after a long day at the office and sat near the window.",
)


class Kind(enum.StrEnum):
    MFT = "minimum functionality"
    INV = "invariance"
    DIR = "direction"


@dataclasses.dataclass(frozen=True)
class Case:
    """One test: `text` judged alone (MFT, against `label`) or against `original` (INV, DIR)."""

    capability: str
    kind: Kind
    text: str
    label: int | None = None  # MFT: 1 positive, 0 negative
    original: str | None = None  # INV, DIR: the text it is compared with
    direction: int = 0  # DIR: +1 the probability must not fall, -1 it must not rise


def _sentence(noun: str, adjective: str, tense: str) -> str:
    verb = (
        {"present": "is", "past": "was"}[tense] if noun not in ("staff",) else {"present": "are", "past": "were"}[tense]
    )
    return f"The {noun} {verb} {adjective}."


def _typo(word: str, rng: random.Random) -> str:
    """Two adjacent letters swapped, the commonest typing slip."""
    at = rng.randrange(len(word) - 1)
    return word[:at] + word[at + 1] + word[at] + word[at + 2 :]


def cases() -> list[Case]:
    """The suite, the same on every call."""
    rng = random.Random(SEED)
    suite: list[Case] = []
    pairs = [(noun, adjective) for noun in NOUNS for adjective in PRAISE]
    bad_pairs = [(noun, adjective) for noun in NOUNS for adjective in COMPLAINT]
    for tense in ("present", "past"):
        for noun, adjective in rng.sample(pairs, 20):
            suite.append(Case(f"praise, {tense} tense, short", Kind.MFT, _sentence(noun, adjective, tense), label=1))
        for noun, adjective in rng.sample(bad_pairs, 20):
            text = _sentence(noun, adjective, tense)
            suite.append(Case(f"complaint, {tense} tense, short", Kind.MFT, text, label=0))
    for noun, adjective in rng.sample(pairs, 15):
        text = f"{rng.choice(OPENINGS)} {_sentence(noun, adjective, 'past')} We will definitely come back."
        suite.append(Case("praise, long", Kind.MFT, text, label=1))
    for noun, adjective in rng.sample(bad_pairs, 15):
        text = f"{rng.choice(OPENINGS)} {_sentence(noun, adjective, 'past')} We will not be coming back."
        suite.append(Case("complaint, long", Kind.MFT, text, label=0))
    for noun, adjective in rng.sample(pairs, 20):
        text = _sentence(noun, f"not {adjective}", rng.choice(("present", "past")))
        suite.append(Case("negation: negated praise is negative", Kind.MFT, text, label=0))
    for noun in rng.sample(NOUNS, 10):
        suite.append(Case("negation: never disappointed is positive", Kind.MFT, f"The {noun} never disappoints.", 1))
        text = f"I have never been disappointed by the {noun} here."
        suite.append(Case("negation: never disappointed is positive", Kind.MFT, text, label=1))
    for noun, adjective in rng.sample(pairs, 15):
        plain, strong = (
            _sentence(noun, adjective, "past"),
            _sentence(noun, f"{rng.choice(INTENSIFIERS)} {adjective}", "past"),
        )
        suite.append(Case("intensity", Kind.DIR, strong, original=plain, direction=+1))
    for noun, adjective in rng.sample(bad_pairs, 15):
        plain, strong = (
            _sentence(noun, adjective, "past"),
            _sentence(noun, f"{rng.choice(INTENSIFIERS)} {adjective}", "past"),
        )
        suite.append(Case("intensity", Kind.DIR, strong, original=plain, direction=-1))
    originals = [_sentence(n, a, "past") for n, a in rng.sample(pairs, 15) + rng.sample(bad_pairs, 15)]
    for original in originals:
        name, place, number = rng.choice(NAMES), rng.choice(PLACES), rng.randrange(2, 60)
        suite.append(Case("irrelevant: a name", Kind.INV, f"{original} {name} chose the table.", original=original))
        suite.append(Case("irrelevant: a place", Kind.INV, f"We were in {place}. {original}", original=original))
        suite.append(Case("irrelevant: a number", Kind.INV, f"{original} We were {number} people.", original=original))
    for noun, adjective in rng.sample(pairs, 15) + rng.sample(bad_pairs, 15):
        original = _sentence(noun, adjective, "past")
        misspelt = _sentence(noun, _typo(adjective, rng), "past") if rng.random() < 0.5 else None
        misspelt = misspelt or _sentence(_typo(noun, rng), adjective, "past")
        suite.append(Case("typos", Kind.INV, misspelt, original=original))
    return suite


@dataclasses.dataclass(frozen=True)
class Outcome:
    case: Case
    probability: float
    original_probability: float | None
    passed: bool


@dataclasses.dataclass(frozen=True)
class Report:
    outcomes: tuple[Outcome, ...]

    @property
    def pass_rate(self) -> float:
        return sum(o.passed for o in self.outcomes) / len(self.outcomes)

    def by_capability(self) -> dict[str, tuple[int, int]]:
        """capability -> (passed, cases), in the suite's order."""
        table: dict[str, tuple[int, int]] = {}
        for outcome in self.outcomes:
            passed, total = table.get(outcome.case.capability, (0, 0))
            table[outcome.case.capability] = (passed + outcome.passed, total + 1)
        return table

    def rows(self) -> dict[str, list]:
        """One row per case, column by column (MLflow's log_table)."""
        return {
            "capability": [o.case.capability for o in self.outcomes],
            "kind": [o.case.kind.value for o in self.outcomes],
            "text": [o.case.text for o in self.outcomes],
            "expected": [_expected(o.case) for o in self.outcomes],
            "probability": [round(o.probability, 4) for o in self.outcomes],
            "original_probability": [
                None if o.original_probability is None else round(o.original_probability, 4) for o in self.outcomes
            ],
            "passed": [o.passed for o in self.outcomes],
        }


def slug(capability: str) -> str:
    """A capability as a metric name: "irrelevant: a name" -> "irrelevant_a_name"."""
    return "_".join("".join(c if c.isalnum() else " " for c in capability.lower()).split())


def _expected(case: Case) -> str:
    if case.kind is Kind.MFT:
        return "positive" if case.label == 1 else "negative"
    if case.kind is Kind.INV:
        return "same answer as the original"
    return "not lower than the original" if case.direction > 0 else "not higher than the original"


def run(
    predict: Callable[[Sequence[str]], Sequence[float]], threshold: float, suite: Sequence[Case] | None = None
) -> Report:
    """Judge every case with `predict` (texts -> probabilities), in one batch."""
    suite = list(cases() if suite is None else suite)
    texts = sorted({c.text for c in suite} | {c.original for c in suite if c.original is not None})
    probability = dict(zip(texts, (float(p) for p in predict(texts)), strict=True))
    outcomes = []
    for case in suite:
        p = probability[case.text]
        before = probability[case.original] if case.original is not None else None
        if case.kind is Kind.MFT:
            passed = (p >= threshold) == (case.label == 1)
        elif case.kind is Kind.INV:
            passed = (p >= threshold) == (before >= threshold)
        else:
            passed = case.direction * (p - before) >= -DIRECTION_TOLERANCE
        outcomes.append(Outcome(case, p, before, passed))
    return Report(tuple(outcomes))
