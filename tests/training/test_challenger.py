"""Champion/challenger: the paired test, the decision table and the report (training/challenger.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from training import challenger, data
from training.challenger import AutoPromote, SetResult, Verdict


def result(name: str, b: int, c: int, n: int = 1000) -> SetResult:
    """A set where the champion alone is right on b texts, the challenger alone on c, both on half the rest."""
    both = (n - b - c) // 2
    return SetResult(name, n, both + b, both + c, b, c, challenger.mcnemar_exact(b, c))


def test_mcnemar_exact_matches_the_binomial_tail_computed_by_hand() -> None:
    # b = 1, c = 9: P(X <= 1 | n = 10, p = 1/2) = (1 + 10) / 1024, two-sided doubles it.
    assert challenger.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert challenger.mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    # b = 2, c = 2: the two-sided tail covers everything.
    assert challenger.mcnemar_exact(2, 2) == pytest.approx(1.0)
    # b = 0, c = 6: 2 / 64.
    assert challenger.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert challenger.mcnemar_exact(0, 0) == 1.0


def test_compare_counts_discordant_pairs_and_accuracies() -> None:
    labels = [1, 1, 0, 0, 1, 0]
    champion = [1, 0, 0, 1, 0, 0]  # right on 0, 2, 5
    new = [1, 1, 0, 0, 1, 1]  # right on 0, 1, 2, 3, 4

    r = challenger.compare("test", labels, champion, new)

    assert (r.n, r.champion_correct, r.challenger_correct) == (6, 3, 5)
    assert (r.champion_only, r.challenger_only) == (1, 3)  # text 5; texts 1, 3, 4
    assert r.p_value == pytest.approx(challenger.mcnemar_exact(1, 3))
    assert math.isclose(r.challenger_accuracy, 5 / 6)
    assert r.verdict() is Verdict.NO_DIFFERENCE  # 4 discordant pairs cannot be significant


@pytest.mark.parametrize("predictions", [([1], [1, 0]), ([], [])])
def test_compare_mismatched_or_empty_sets_raise(predictions: tuple[list[int], list[int]]) -> None:
    champion, new = predictions
    with pytest.raises(ValueError, match="labels"):
        challenger.compare("s", [1] * len(new), champion, new)


@pytest.mark.parametrize(
    ("b", "c", "verdict"),
    [(1, 9, Verdict.BETTER), (9, 1, Verdict.WORSE), (3, 7, Verdict.NO_DIFFERENCE), (0, 0, Verdict.NO_DIFFERENCE)],
)
def test_set_result_verdict_is_significance_and_direction(b: int, c: int, verdict: Verdict) -> None:
    assert result("s", b, c).verdict() is verdict


BETTER, WORSE, SAME = (1, 30), (30, 1), (10, 12)


@pytest.mark.parametrize(
    ("sets", "mode", "beats", "promote"),
    [
        ([BETTER], AutoPromote.NEVER, True, False),
        ([BETTER], AutoPromote.CANARY, True, True),
        ([BETTER, SAME, SAME], AutoPromote.CANARY, True, True),
        ([SAME, SAME], AutoPromote.CANARY, False, False),
        ([BETTER, WORSE], AutoPromote.CANARY, False, False),
        ([WORSE], AutoPromote.CANARY, False, False),
        ([SAME, WORSE], AutoPromote.NEVER, False, False),
        ([], AutoPromote.CANARY, False, False),
    ],
    ids=[
        "better-never",
        "better-canary",
        "better-and-same",
        "all-same",
        "better-and-worse",
        "worse",
        "same-and-worse-never",
        "no-sets",
    ],
)
def test_decide_beats_only_when_better_somewhere_and_worse_nowhere_and_promotes_only_with_canary(
    sets: list[tuple[int, int]], mode: AutoPromote, beats: bool, promote: bool
) -> None:
    results = challenger.holm([result(f"set{i}", b, c) for i, (b, c) in enumerate(sets)])

    decision = challenger.decide(results, mode)

    assert (decision.beats_champion, decision.promote) == (beats, promote)


def test_holm_adjusts_the_smallest_p_by_the_number_of_sets_then_steps_down_monotone() -> None:
    ps = [0.01, 0.04, 0.03, 0.5]
    results = [dataclasses.replace(result(f"s{i}", 1, 9), p_value=p) for i, p in enumerate(ps)]

    adjusted = [r.p_holm for r in challenger.holm(results)]

    # by hand: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_a_win_on_one_set_of_four_by_chance_is_not_a_win_but_a_regression_on_one_still_vetoes() -> None:
    # What a real run showed: better on the test split at p 0.019, no difference on three other sets.
    chance_win = challenger.holm([result("test", 40, 65, n=17629), *(result(f"ood{i}", 50, 50) for i in range(3))])
    regression = challenger.holm([result("test", 1, 40), result("ood", 65, 40, n=17629), result("o2", 5, 5)])

    assert chance_win[0].p_value < 0.05 < chance_win[0].p_holm
    assert chance_win[0].verdict() is Verdict.NO_DIFFERENCE
    assert challenger.decide(chance_win, AutoPromote.CANARY).beats_champion is False
    assert regression[1].verdict() is Verdict.WORSE  # its own p 0.019: enough to veto, though Holm's is not
    assert challenger.decide(regression, AutoPromote.CANARY).beats_champion is False


@pytest.mark.parametrize(("text", "mode"), [("never", AutoPromote.NEVER), (" Canary ", AutoPromote.CANARY)])
def test_auto_promote_parse_accepts_the_two_modes(text: str, mode: AutoPromote) -> None:
    assert AutoPromote.parse(text) is mode


@pytest.mark.parametrize("text", ["", "always", "true"])
def test_auto_promote_parse_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="AUTO_PROMOTE must be one of never, canary"):
        AutoPromote.parse(text)


def test_report_markdown_has_one_row_per_set_with_counts_p_value_and_verdict() -> None:
    results = challenger.holm([result("test", 1, 9, n=100), result("ood_dynasent", 3, 7, n=50)])
    decision = challenger.decide(results, AutoPromote.NEVER)

    table = challenger.report_markdown(results, decision, "3", "4")
    as_json = challenger.report(results, decision, "3", "4")

    header = "| set | n | champion accuracy | challenger accuracy | discordant b/c | p-value | Holm p | verdict |"
    assert header in table
    assert "| test | 100 | 0.4600 | 0.5400 | 1/9 | 0.02148 | 0.04297 | better |" in table
    assert "| ood_dynasent | 50 | " in table
    assert "| 3/7 |" in table
    assert "beats_champion: true" in table
    assert as_json["beats_champion"] is True
    assert as_json["champion_version"] == "3"
    assert [s["verdict"] for s in as_json["sets"]] == ["better", "no significant difference"]


def test_accuracy_figure_draws_two_bars_per_set() -> None:
    figure = challenger.accuracy_figure([result("test", 1, 9), result("feedback", 0, 0, n=10)], "3", "4")

    assert len(figure.axes[0].patches) == 4


def test_evaluation_sets_are_test_split_ood_and_feedback_of_the_test_split_only() -> None:
    reports = [
        data.SourceReport("gs://b/p/feedback/f.jsonl", "labelled_json", used=4, feedback=True),
        data.SourceReport("gs://b/p/yelp/r.jsonl", "yelp_json", used=4),
    ]
    texts = [f"t{i}" for i in range(8)]
    dataset = data.Dataset(texts, [1, 0, 1, 0, 1, 0, 1, 0], reports, data.LabelRule())
    split = data.Split(train=[0, 4, 5], validation=[6], test=[1, 3, 2, 7], seed=1)
    ood = {"dev": data.LabelledTexts(["o"], [1])}

    sets = challenger.evaluation_sets(dataset, split, ood)
    without_feedback = challenger.evaluation_sets(dataset, data.Split([0, 1, 2, 3], [4], [5, 6, 7], 1), {})

    assert list(sets) == ["test", "ood_dev", "feedback"]
    assert sets["test"].texts == ["t1", "t3", "t2", "t7"]
    assert sets["feedback"].texts == ["t1", "t3", "t2"]
    assert sets["feedback"].labels == [0, 0, 1]
    assert list(without_feedback) == ["test"]
