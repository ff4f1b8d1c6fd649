"""Monitoring on the local stack, end to end: a promoted version serves held-out Yelp reviews and shows no drift;
then a stream of texts from another domain makes its drift true with a reason, the watcher's scheduled tick logs
`drift_detected` once, and the page says so.

The held-out reviews are the test split of the model's own training run (same data, limit and seed), so they
look like the validation split its reference was computed on. The other domain is movie review snippets
(`../shared/data/ood/vader_movie_snippets.tsv`, a development set that no model here trains on).
"""

from __future__ import annotations

import csv
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentiment_core.http import MAX_BODY_BYTES, MAX_TEXT_CHARS
from tests.functions.conftest import call
from tests.localdev.stack_support import promote_as_the_ui_does, running_stack, train, wait_for_version
from training import data

pytestmark = pytest.mark.e2e

# Ticks every 2 s, each evaluating drift (production evaluates every 10 minutes), switches at once.
SETTINGS = {"LOCAL_TICK_INTERVAL_S": "2", "ROLLOUT_STEPS": "100", "DRIFT_EVALUATE_EVERY_S": "0"}
SEED, LIMIT = 1, 20_000  # stack_support.train's defaults: the split below is that run's
OOD = data.DEFAULT_DATA_DIR.parent / "ood" / "vader_movie_snippets.tsv"
HELD_OUT, OTHER_DOMAIN = 300, 900
MAX_BATCH = 100  # predict's
DRIFT_WITHIN_S = 60.0  # a deadline for "it happens", not a figure
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[dict]:
    """The stack with a freshly trained version promoted and serving all traffic."""
    with running_stack(tmp_path_factory.mktemp("monitoring-stack"), SETTINGS) as stack:
        urls = stack["urls"]
        version = train(urls, stack["env"], seed=SEED, limit=LIMIT)
        promote_as_the_ui_does(urls, version)
        wait_for_version(urls, version, timeout_s=120)
        yield {**stack, "version": version}


def held_out_reviews(count: int) -> list[str]:
    """Texts of the training run's test split: never trained on, distributed as its validation split."""
    dataset = data.load_dataset(None, data.LabelRule(3.0))
    texts = dataset.texts[:LIMIT]
    split = data.stratified_split(dataset.labels[:LIMIT], val_fraction=0.1, test_fraction=0.1, seed=SEED, texts=texts)
    # predict takes texts of up to 5,000 characters: the few longer reviews stay out. The split lists each class
    # in turn: a random draw keeps their mix.
    usable = [i for i in split.test if len(texts[i]) <= MAX_TEXT_CHARS]
    return [texts[i] for i in random.Random(SEED).sample(usable, count)]


def movie_snippets(count: int) -> list[str]:
    with OOD.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [row["text"] for row in rows[:count]]


def send(urls: dict, texts: list[str]) -> None:
    """In batches that fit predict's limits (100 texts, 64 KiB of body)."""
    batch: list[str] = []
    for text in [*texts, None]:
        full = len(batch) == MAX_BATCH or len(json.dumps([*batch, text])) > MAX_BODY_BYTES // 2
        if batch and (text is None or full):
            answer = call(urls["predict"], {"texts": batch}, timeout=30)
            assert answer.status == 201, answer.raw
            batch = []
        if text is not None:
            batch.append(text)


def monitoring(urls: dict, version: str) -> dict:
    answer = call(f"{urls['feedback']}/monitoring?hours=24")
    assert answer.status == 200, answer.raw
    return answer.json["monitoring"]["versions"][version]


def watcher_lines(state: Path, *events: str) -> list[dict]:
    """The watcher's JSON log lines whose `event` is one of these (one log file per start)."""
    lines = []
    for path in (state / "logs").glob("registry_watcher-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and any(f'"{event}"' in line for event in events):
                entry = json.loads(line)
                if entry.get("event") in events:
                    lines.append(entry)
    return lines


def drift_lines(state: Path) -> list[dict]:
    return watcher_lines(state, "drift_detected", "drift_resolved")


def evaluations_of(state: Path, version: str) -> list[dict]:
    return [line for line in watcher_lines(state, "monitoring_evaluated") if line["model_version"] == version]


def wait_for(condition, what: str):
    """Poll until condition() is truthy; its value. The deadline is for "it happens", not a figure."""
    deadline = time.monotonic() + DRIFT_WITHIN_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {DRIFT_WITHIN_S} s")


def wait_for_evaluations(state: Path, version: str, count: int, predictions: int) -> None:
    """Until `count` more scheduled evaluations of the version have seen its `predictions`."""
    seen = len([e for e in evaluations_of(state, version) if e["predictions"] == predictions])
    wait_for(
        lambda: len([e for e in evaluations_of(state, version) if e["predictions"] == predictions]) >= seen + count,
        f"{count} evaluations of version {version} with {predictions} predictions",
    )


def test_held_out_reviews_then_another_domain_drift_once_and_the_page_shows_it(serving: dict) -> None:
    urls, version, state = serving["urls"], serving["version"], serving["state"]
    reviews = held_out_reviews(HELD_OUT)

    send(urls, reviews)
    calm = monitoring(urls, version)
    wait_for_evaluations(state, version, 2, HELD_OUT)  # the scheduled evaluation saw the calm window twice

    assert (calm["predictions"], calm["drift"], calm["reasons"]) == (HELD_OUT, False, [])
    assert calm["enough_data"] is True
    assert calm["reference_positive_rate"] is not None
    assert drift_lines(state) == []

    send(urls, movie_snippets(OTHER_DOMAIN))
    (line,) = wait_for(lambda: drift_lines(state), "a drift_detected line")
    wait_for_evaluations(state, version, 3, HELD_OUT + OTHER_DOMAIN)  # the drift goes on: nothing more logged
    drifting = monitoring(urls, version)

    assert drifting["drift"] is True
    assert drifting["reasons"]
    assert drifting["predictions"] == HELD_OUT + OTHER_DOMAIN
    assert drift_lines(state) == [line]
    assert (line["event"], line["severity"], line["model_version"]) == ("drift_detected", "WARNING", version)
    assert line["reasons"]
    assert not any(text[:40] in json.dumps(line) for text in reviews[:50])  # no review text in the log

    page_text = _page_monitoring_text(urls["frontend"])
    assert f"Version {version}" in page_text
    assert "Drift: " in page_text, page_text
    assert drifting["reasons"][0].split()[0] in page_text


def _page_monitoring_text(url: str) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.locator("#monitoring-versions .drift-state.drift").first.wait_for(timeout=15_000)
            return page.locator("#monitoring-versions").inner_text()
        finally:
            browser.close()
