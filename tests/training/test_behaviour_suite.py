"""The behavioural suite (training.behaviour): its cases, how each kind is judged, and the shipped model against it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from training import behaviour, export


@pytest.mark.unit
def test_suite_is_a_few_hundred_fixed_cases_over_every_capability_the_issue_names() -> None:
    suite = behaviour.cases()
    capabilities = Counter(case.capability for case in suite)

    assert 200 <= len(suite) <= 500
    assert behaviour.cases() == suite  # the same cases on every run
    assert {
        "praise, past tense, short",
        "complaint, present tense, short",
        "praise, long",
        "intensity",
        "typos",
    } <= set(capabilities)
    assert any(c.startswith("negation") for c in capabilities)
    assert {c for c in capabilities if c.startswith("irrelevant")} == {
        "irrelevant: a name",
        "irrelevant: a place",
        "irrelevant: a number",
    }
    assert all(case.original is not None for case in suite if case.kind is not behaviour.Kind.MFT)


@pytest.mark.unit
def test_each_kind_of_case_is_judged_as_its_definition_says() -> None:
    suite = [
        behaviour.Case("mft", behaviour.Kind.MFT, "good", label=1),
        behaviour.Case("mft", behaviour.Kind.MFT, "bad", label=1),
        behaviour.Case("inv", behaviour.Kind.INV, "good, Maria", original="good"),
        behaviour.Case("inv", behaviour.Kind.INV, "good, in Ohio", original="good"),
        behaviour.Case("dir", behaviour.Kind.DIR, "very good", original="good", direction=+1),
        behaviour.Case("dir", behaviour.Kind.DIR, "very bad", original="bad", direction=-1),
    ]
    probability = {
        "good": 0.8,
        "bad": 0.2,
        "good, Maria": 0.6,
        "good, in Ohio": 0.4,
        "very good": 0.76,
        "very bad": 0.3,
    }

    report = behaviour.run(lambda texts: [probability[t] for t in texts], 0.5, suite)

    # bad is not positive; Ohio flips the answer; "very bad" rose by 0.1 (> the 0.05 tolerance), "very good" fell 0.04
    assert [o.passed for o in report.outcomes] == [True, False, True, False, True, False]
    assert report.by_capability() == {"mft": (1, 2), "inv": (1, 2), "dir": (1, 2)}
    assert report.pass_rate == pytest.approx(0.5)
    assert report.rows()["expected"][:3] == ["positive", "positive", "same answer as the original"]


@pytest.mark.unit
def test_capability_slugs_are_metric_names() -> None:
    assert behaviour.slug("negation: never disappointed is positive") == "negation_never_disappointed_is_positive"
    assert behaviour.slug("praise, past tense, short") == "praise_past_tense_short"


def test_the_shipped_model_passes_the_suite_at_the_gates_default_minimum(trained_full: dict) -> None:
    session = export.session((Path(trained_full["staged_dir"]) / "model.onnx").read_bytes())

    report = behaviour.run(lambda texts: export.onnx_probabilities(session, list(texts)), 0.5)

    assert report.pass_rate >= 0.8, report.by_capability()
