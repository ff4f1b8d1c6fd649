"""The static page in a real browser (Debian's Chromium, headless, driven by Playwright) against the real
functions and the Firestore emulator: analyze, give feedback, see statistics change, this browser's own recent
predictions (kept in localStorage, never fetched: feedback runs with PREDICTIONS_LISTING off), and errors."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from localdev import services, website
from sentiment_core import rollout
from sentiment_core.contract import MODEL_NAME
from sentiment_core.deployment_store import DeploymentStore
from sentiment_core.deployments import DeploymentState, Rollout, Serving
from sentiment_core.firestore_rest import RestPredictionWriter
from sentiment_core.monitoring import Reference
from sentiment_core.records import Prediction
from sentiment_core.store import save_reference
from tests.functions.conftest import ORIGIN, PROJECT, call
from tests.support import monitored_prediction, review_answers, save_predictions

CHROMIUM = Path("/usr/bin/chromium")
POSITIVE = "The pasta was wonderful and the staff were so friendly. Great value!"


@pytest.fixture(scope="module")
def site(function_env: dict, tmp_path_factory) -> Iterator[dict]:
    """The page built as the local stack builds it, served as a static site; predict and feedback allow its
    origin. A test may stop predict to see the page's errors: `live_site` starts it again."""
    workdir = tmp_path_factory.mktemp("site")
    port = services.free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**function_env, "ALLOWED_ORIGINS": origin}
    root = workdir / "www"
    with contextlib.ExitStack() as running:
        feedback = running.enter_context(services.start_function("feedback", workdir, env, ready_path="/statistics"))
        site = {"url": origin, "feedback": feedback, "workdir": workdir, "env": env}
        site["predict"] = services.start_function("predict", workdir, env)
        running.callback(lambda: site["predict"].stop())
        website.build(root, site["predict"].url, feedback.url)
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
        running.enter_context(
            services.start("site", argv, url=origin, ready_path="/config.json", log_path=workdir / "site.log")
        )
        yield site


@pytest.fixture
def live_site(site: dict) -> dict:
    """The site with predict answering, on the URL its config.json names."""
    try:
        answering = call(f"{site['predict'].url}/healthz", timeout=10).status == 200
    except OSError:  # refused: stopped by an earlier test
        answering = False
    if not answering:
        site["predict"].stop()
        port = urllib.parse.urlsplit(site["predict"].url).port
        site["predict"] = services.start_function("predict", site["workdir"], site["env"], port=port)
    return site


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests drive Debian's Chromium at {CHROMIUM}: `sudo apt-get install chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """SCREENSHOT_DIR keeps them (docs/img for the README); otherwise the test's temporary folder."""
    folder = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def unavailable(retry_after_s: int) -> Callable:
    """A route handler answering as predict or feedback do when their store is down (with CORS, as they do)."""

    def answer(route) -> None:
        origin = route.request.headers.get("origin", "")
        route.fulfill(
            status=503,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": "Idempotent-Replayed, Retry-After",
                "Retry-After": str(retry_after_s),
            },
            json={"error": {"code": "store_unavailable", "message": "the store cannot be reached; retry later"}},
        )

    return answer


def unreachable(route) -> None:
    route.abort("connectionrefused")


def intercept_predict(page, site: dict, failures: list[Callable]) -> list[dict]:
    """Every POST the page sends to predict (Idempotency-Key, body, when), answered by the next of `failures`
    while there are any, then passed on to the real predict."""
    sent: list[dict] = []

    def handle(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        sent.append(
            {
                "key": route.request.headers.get("idempotency-key"),
                "body": route.request.post_data,
                "at": time.monotonic(),
            }
        )
        if failures:
            failures.pop(0)(route)
        else:
            route.continue_()

    predict = site["predict"].url
    page.route(lambda url: url.startswith(f"{predict}/"), handle)
    return sent


def answered_prediction(site: dict, text: str, *, user_says_positive: bool) -> dict:
    """A prediction with feedback, made through the functions, for the page to show."""
    prediction = call(site["predict"].url, {"text": text}).json
    answer = {
        "prediction_id": prediction["id"],
        "is_positive_user_answered": user_says_positive,
        "feedback_token": prediction["feedback_token"],
    }
    assert call(site["feedback"].url, answer).status == 200
    return prediction


def rollout_in_progress(site: dict, db, percent: int) -> tuple[str, str]:
    """The version serving (stable) and the next one (candidate) at `percent`, each with a prediction stored:
    the deployment document as the watcher records a rollout, the candidate's record as its predict writes it."""
    stable = answered_prediction(site, POSITIVE, user_says_positive=True)["details"]["model_version"]
    candidate = str(int(stable) + 1)
    now = datetime.now(UTC)
    writer = RestPredictionWriter(
        PROJECT, "(default)", 5.0, endpoint=f"http://{site['env']['FIRESTORE_EMULATOR_HOST']}", token=lambda: "owner"
    )
    try:
        writer.save_predictions(
            [Prediction(uuid.uuid4().hex, "Fine.", 0.8, True, None, MODEL_NAME, candidate, "run", 0.001, now)]
        )
    finally:
        writer.close()
    serving = Serving(stable, "run", "0" * 64, f"gs://staged/{MODEL_NAME}/v{stable}", f"e{stable}", now)
    state = DeploymentState(serving=serving, rollout=Rollout.of(rollout.start(stable, candidate, now), percent))
    store = DeploymentStore(db, MODEL_NAME)
    assert store.commit(store.read(), state)
    return stable, candidate


def finish_rollout(db, status: rollout.RolloutStatus, serving_version: str) -> None:
    """The rollout recorded as ended, with `serving_version` taking all traffic."""
    store = DeploymentStore(db, MODEL_NAME)
    snapshot = store.read()
    state = snapshot.state
    ended = dataclasses.replace(state.rollout, state=status, candidate_percent=0, ended_at=datetime.now(UTC))
    serving = dataclasses.replace(state.serving, version=serving_version)
    assert store.commit(snapshot, dataclasses.replace(state, serving=serving, rollout=ended))


def open_page(browser, site: dict, **options):
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(site["url"])
    return context, page


def test_page_analyze_feedback_statistics_own_recent_predictions_and_errors(
    live_site, browser, clean_db, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    site = live_site
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(site["url"])

    expect(page.locator("#recent-empty")).to_be_visible()
    expect(page.locator("#stats-overall")).to_have_text("No feedback yet")
    expect(page.locator("#retention")).to_have_text(
        "Stored: each review you analyze, with the model's answer and yours, for 30 days, then deleted; "
        "the list of your recent predictions stays in this browser."
    )

    # A positive review, by keyboard: type, Ctrl+Enter.
    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_label("Review text").press("Control+Enter")
    expect(page.locator("#result-label")).to_have_text("Positive")
    expect(page.locator("#result-model")).to_contain_text("version")
    page.get_by_role("button", name="Yes", exact=True).click()
    expect(page.locator("#feedback-status")).to_have_text("Thanks, your answer counted.")
    expect(page.locator("#stats-overall")).to_have_text("100.0% right")
    expect(page.locator("#stats-counts")).to_have_text("1 prediction, 1 with feedback, 1 correct.")
    page.screenshot(path=str(screenshots / "page-positive.png"), full_page=True)

    # A negative one, which the user says the model got wrong: the rate halves.
    page.get_by_label("Review text").fill("Cold fries, rude cashier and a dirty table. Never again.")
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#result-label")).to_have_text("Negative")
    page.get_by_role("button", name="No", exact=True).click()
    expect(page.locator("#stats-overall")).to_have_text("50.0% right")
    expect(page.locator("#stats-counts")).to_have_text("2 predictions, 2 with feedback, 1 correct.")
    expect(page.locator("#stats-table tbody tr")).to_have_count(1)
    expect(page.locator("#stats-chart rect")).to_have_count(2)

    # Recent predictions: this browser's own, newest first, with the answers given; someone else's never.
    recent = page.locator("#recent-list li")
    expect(recent).to_have_count(2)
    expect(recent.first).to_contain_text("Cold fries")
    expect(recent.first).to_contain_text("you disagreed")
    expect(recent.last).to_contain_text("The pasta was wonderful")
    expect(recent.last).to_contain_text("you agreed")
    for n in range(3):
        assert call(site["predict"].url, {"text": f"someone else's review number {n}"}).status == 201
    page.reload()
    expect(page.locator("#stats-counts")).to_have_text("5 predictions, 2 with feedback, 1 correct.")
    expect(recent).to_have_count(2)
    expect(page.locator("#recent-list")).not_to_contain_text("someone else")

    # Analyzed, not answered, the page reloaded: the list still holds its feedback token, so it can be answered.
    page.get_by_label("Review text").fill("Lovely little bakery, the croissants are the best in town.")
    page.get_by_role("button", name="Analyze").click()
    expect(recent).to_have_count(3)
    page.reload()
    expect(recent.first).to_contain_text("Lovely little bakery")
    expect(recent.first).to_contain_text("no feedback")
    recent.first.get_by_role("button", name="Yes, the answer to “Lovely little bakery, the croissants are…”").click()
    expect(recent.first).to_contain_text("you agreed")
    expect(recent.first.get_by_role("button")).to_have_count(0)
    expect(page.locator("#stats-counts")).to_have_text("6 predictions, 3 with feedback, 2 correct.")
    page.reload()
    expect(recent.first).to_contain_text("you agreed")  # the answer is kept with the prediction

    # Errors in plain words: too long, then predict down.
    page.get_by_label("Review text").fill("x" * 5001)
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#analyze-error")).to_have_text(
        "The review is too long: 5,001 characters, the limit is 5,000. Shorten it and try again."
    )
    site["predict"].stop()
    page.get_by_label("Review text").fill("Is anybody there?")
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#analyze-progress")).to_contain_text("did not answer; retrying in 1 second (retry 1 of 2)")
    # Two retries, 1 s and 2 s apart, before the page gives up.
    expect(page.locator("#analyze-error")).to_contain_text("Cannot reach the prediction service", timeout=15_000)
    expect(page.locator("#analyze-progress")).to_be_hidden()
    page.screenshot(path=str(screenshots / "page-predict-down.png"), full_page=True)

    allowed = {site["url"], site["predict"].url, site["feedback"].url}
    origins = {f"{urllib.parse.urlsplit(u).scheme}://{urllib.parse.urlsplit(u).netloc}" for u in requested}
    assert origins <= allowed, origins - allowed
    assert [u for u in requested if urllib.parse.urlsplit(u).path.endswith("/predictions")] == []
    context.close()


def stored_entry(text: str, made_at: datetime) -> dict:
    """One entry of the page's localStorage list, as it keeps a prediction (not a real one: never answered)."""
    stamp = made_at.isoformat().replace("+00:00", "Z")  # as predict answers it
    return {
        "id": uuid.uuid4().hex,
        "text": text,
        "probability": 0.9,
        "is_positive": {"model_answered": True, "user_answered": None},
        "details": {"model_name": MODEL_NAME, "model_version": "1", "mlflow_run_id": "run", "timestamp": stamp},
        "feedback_token": "t" * 64,
    }


def test_page_keeps_the_last_20_of_its_own_predictions_and_drops_those_past_retention(live_site, browser) -> None:
    from playwright.sync_api import expect

    now = datetime.now(UTC)
    entries = [stored_entry(f"older review {n}", now - timedelta(minutes=n + 1)) for n in range(20)]
    entries.append(stored_entry("a review past retention", now - timedelta(days=31)))
    context, page = open_page(browser, live_site)
    page.evaluate("entries => localStorage.setItem('review-sentiment.recent', JSON.stringify(entries))", entries)
    page.reload()
    recent = page.locator("#recent-list li")
    expect(recent).to_have_count(20)
    expect(page.locator("#recent-list")).not_to_contain_text("past retention")

    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()

    expect(recent).to_have_count(20)
    expect(recent.first).to_contain_text("The pasta was wonderful")
    expect(recent.last).to_contain_text("older review 18")  # the oldest, 19, made room
    stored = page.evaluate("JSON.parse(localStorage.getItem('review-sentiment.recent'))")
    assert len(stored) == 20
    assert stored[0]["feedback_token"]
    assert "explanation" not in stored[0]["details"]
    context.close()


def test_page_with_unreadable_storage_starts_with_an_empty_list(live_site, browser) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    page.evaluate("localStorage.setItem('review-sentiment.recent', '{not json')")
    page.reload()

    expect(page.locator("#recent-empty")).to_be_visible()
    expect(page.locator("#stats-overall")).not_to_have_text("Loading…")
    context.close()


def test_page_sends_a_new_idempotency_key_with_each_analyze(live_site, browser) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    sent = intercept_predict(page, live_site, failures=[])

    page.get_by_label("Review text").fill(POSITIVE)
    for _ in range(2):  # the same text twice: two clicks, two predictions
        page.get_by_role("button", name="Analyze").click()
        expect(page.locator("#result")).to_be_visible()
        expect(page.get_by_role("button", name="Analyze")).to_be_enabled()

    assert len(sent) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", attempt["key"] or "") for attempt in sent), sent
    assert sent[0]["key"] != sent[1]["key"]
    context.close()


@pytest.mark.parametrize("failure", [unavailable(1), unreachable], ids=["503-retry-after-1", "no-answer"])
def test_page_analyze_retries_a_failed_request_with_the_same_key_and_shows_the_result(
    live_site, browser, clean_db, failure: Callable
) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    sent = intercept_predict(page, live_site, failures=[failure])

    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#analyze-progress")).to_contain_text("retrying in 1 second (retry 1 of 2)")
    expect(page.get_by_role("button", name="Retrying…")).to_be_disabled()
    expect(page.locator("#result-label")).to_have_text("Positive")
    expect(page.locator("#analyze-progress")).to_be_hidden()
    expect(page.locator("#analyze-error")).to_be_hidden()
    assert len(sent) == 2
    assert (sent[1]["key"], sent[1]["body"]) == (sent[0]["key"], sent[0]["body"])
    assert sent[1]["at"] - sent[0]["at"] >= 1.0  # Retry-After, or the first pause when there was no answer
    assert clean_db.collection("predictions").count().get()[0][0].value == 1
    context.close()


def test_page_analyze_gives_up_after_two_retries_with_the_same_key(live_site, browser) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    sent = intercept_predict(page, live_site, failures=[unavailable(1)] * 3)

    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#analyze-error")).to_have_text(
        "The prediction service is unavailable right now. Try again in 1 second.", timeout=10_000
    )
    expect(page.get_by_role("button", name="Analyze")).to_be_enabled()
    assert len(sent) == 3
    assert len({attempt["key"] for attempt in sent}) == 1
    context.close()


def test_page_analyze_does_not_wait_out_a_long_retry_after_and_says_when_to_try(live_site, browser) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    sent = intercept_predict(page, live_site, failures=[unavailable(60)])

    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#analyze-error")).to_have_text(
        "The prediction service is unavailable right now. Try again in 60 seconds."
    )
    assert len(sent) == 1
    context.close()


def test_page_analyze_with_empty_text_clears_the_previous_result(live_site, browser) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    sent = intercept_predict(page, live_site, failures=[])
    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#result")).to_be_visible()

    page.get_by_label("Review text").fill("   ")
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#analyze-error")).to_have_text("There is no review to analyze. Write a review first.")
    assert len(sent) == 1
    context.close()


def test_page_statistics_error_replaces_the_numbers_until_they_load_again(live_site, browser, clean_db) -> None:
    from playwright.sync_api import expect

    answered_prediction(live_site, POSITIVE, user_says_positive=True)
    context, page = open_page(browser, live_site)
    numbers = [page.locator(f"#stats-{part}") for part in ("overall", "counts", "chart", "table")]
    expect(page.locator("#stats-counts")).to_have_text("1 prediction, 1 with feedback, 1 correct.")
    statistics = f"{live_site['feedback'].url}/statistics"

    page.route(statistics, unavailable(5))
    page.get_by_role("button", name="Refresh", exact=True).click()

    expect(page.locator("#stats-error")).to_have_text(
        "The statistics service is unavailable right now. Try again in 5 seconds."
    )
    for part in numbers:
        expect(part).to_be_hidden()

    page.unroute(statistics)
    page.get_by_role("button", name="Refresh", exact=True).click()

    expect(page.locator("#stats-error")).to_be_hidden()
    for part in numbers:
        expect(part).to_be_visible()
    context.close()


@pytest.mark.parametrize(("function", "path"), [("predict", "/healthz"), ("feedback", "/statistics")])
def test_functions_let_the_page_read_retry_after_and_idempotent_replayed(site, function: str, path: str) -> None:
    answer = call(site[function].url + path, headers={"Origin": site["url"]})

    exposed = {name.strip().lower() for name in answer.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"retry-after", "idempotent-replayed"} <= exposed


def test_page_csp_lets_it_connect_only_to_its_site_and_the_two_function_origins(site, browser) -> None:
    context, page = open_page(browser, site)
    policy = page.locator('meta[http-equiv="Content-Security-Policy"]').get_attribute("content")
    directives = {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}
    # A fetch to an origin the policy does not name (CORS would allow this one): the browser refuses to send it.
    refused = page.evaluate(
        """async (url) => {
          const violated = new Promise((resolve) => document.addEventListener(
            "securitypolicyviolation", (event) => resolve(event.effectiveDirective), { once: true }));
          const sent = fetch(url).then(() => "answered", () => "failed");
          return Promise.race([violated, sent.then((outcome) => new Promise((resolve) => setTimeout(
            () => resolve(`no violation (${outcome})`), 2000)))]);
        }""",
        f"{ORIGIN}/",
    )

    assert set(directives["connect-src"]) == {"'self'", site["predict"].url, site["feedback"].url}
    assert refused == "connect-src"
    context.close()


def test_page_favicon_is_an_svg_served_by_the_site_itself(site, browser) -> None:
    context, page = open_page(browser, site)
    href = page.locator('link[rel="icon"]').get_attribute("href")
    icon_url = urllib.parse.urljoin(f"{site['url']}/", href)

    icon = call(icon_url)

    assert icon_url.startswith(f"{site['url']}/")
    assert icon.status == 200
    assert icon.headers["Content-Type"] == "image/svg+xml"
    assert icon.raw.startswith(b"<svg ")
    context.close()


def test_page_shows_the_traffic_split_of_a_rollout_and_labels_the_versions_rows(
    live_site, browser, clean_db, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    stable, candidate = rollout_in_progress(live_site, clean_db, percent=25)
    context, page = open_page(browser, live_site, viewport={"width": 1000, "height": 1200})
    rows = page.locator("#stats-table tbody tr")

    expect(page.locator("#stats-deployment")).to_have_text(
        f"Version {stable} is stable (75%); version {candidate} is being rolled out (25%)."
    )
    expect(rows).to_have_count(2)
    # The label is text inside the version's cell: its accessible name says the role, colour or not.
    expect(page.get_by_role("cell", name=f"v{stable} stable", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=f"v{candidate} candidate", exact=True)).to_be_visible()
    page.screenshot(path=str(screenshots / "page-rollout.png"), full_page=True)

    finish_rollout(clean_db, rollout.RolloutStatus.COMPLETED, serving_version=candidate)
    page.get_by_role("button", name="Refresh", exact=True).click()

    expect(page.locator("#stats-deployment")).to_have_text(f"Version {candidate} serves all traffic.")
    expect(page.get_by_role("cell", name=f"v{candidate} stable", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=f"v{stable}", exact=True)).to_be_visible()
    expect(page.locator("#stats-table .role")).to_have_count(1)

    clean_db.collection("deployments").document(MODEL_NAME).delete()
    page.get_by_role("button", name="Refresh", exact=True).click()

    expect(page.locator("#stats-deployment")).to_be_hidden()
    expect(page.locator("#stats-table .role")).to_have_count(0)
    expect(rows).to_have_count(2)
    context.close()


def test_page_on_a_phone_has_no_horizontal_scroll(live_site, browser, clean_db, screenshots: Path) -> None:
    # Content as wide as it gets: a review with a word longer than the screen, and a full statistics table with
    # two versions of a rollout labelled and the line that says how traffic is split.
    # The monitoring card with both versions' charts, the stable one against its reference, and a drift reason
    # (a long line) for the candidate.
    stable, candidate = rollout_in_progress(live_site, clean_db, percent=50)
    save_reference(clean_db, stable, REFERENCE)
    save_reference(clean_db, candidate, REFERENCE)
    save_predictions(live_site["env"]["FIRESTORE_EMULATOR_HOST"], shifted(candidate, 250, datetime.now(UTC)))
    context, page = open_page(browser, live_site, viewport={"width": 375, "height": 800}, is_mobile=True)
    # Analyzed on the phone, left unanswered: its list item carries the Yes/No buttons too.
    page.get_by_label("Review text").fill("Sooo" + "o" * 120 + " good! " + POSITIVE)
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector("#stats-table:not([hidden]) .role.candidate")
    page.wait_for_selector("#stats-deployment:not([hidden])")
    page.wait_for_selector("#recent-list li .recent-feedback button")
    page.wait_for_selector("#monitoring-versions .drift-state.drift")
    assert page.locator("#monitoring-versions svg.histogram").count() == 2

    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className)"
    )
    table_overflow = page.evaluate(
        "(() => { const wrap = document.querySelector('.table-wrap'); return wrap.scrollWidth - wrap.clientWidth; })()"
    )

    assert width <= 375, wide
    assert table_overflow <= 0  # the whole table on screen, not behind a scroll bar of its own
    page.screenshot(path=str(screenshots / "page-phone.png"), full_page=True)
    context.close()


# --- Monitoring -------------------------------------------------------------------------------------------------

VALIDATION = review_answers(1000, seed=1)
REFERENCE = Reference.of([p for p, _ in VALIDATION], [t for _, t in VALIDATION], None, threshold=0.5)


def shifted(version: str, count: int, at: datetime) -> list[Prediction]:
    """A stream unlike validation: "positive, surely" to nearly everything, on two-letter texts."""
    return [monitored_prediction(version, 0.9 + (i % 10) / 100, at, "ok") for i in range(count)]


def monitored_versions(site: dict, db) -> dict[str, str]:
    """Four versions' last hours, as predict stores them, and the deployment naming two of them:
    11 stable, answering as on validation over three hours with users' answers; 12 the candidate, drifting;
    10 with a reference but few predictions; 9 staged before monitoring (no reference)."""
    now = datetime.now(UTC)
    # Hours away from the hour's boundaries would not help: the page asks for the last 24 hours, these are in it.
    hours = [now - timedelta(hours=h) for h in (3, 2, 1)]
    steady = [
        monitored_prediction("11", p, hours[i % 3], text, user_answer=(p >= 0.5) != (i % 5 == 0) if i % 2 else None)
        for i, (p, text) in enumerate(VALIDATION[:300])
    ]
    few = [monitored_prediction("10", p, hours[2], text) for p, text in VALIDATION[300:320]]
    old = [monitored_prediction("9", p, hours[2], text) for p, text in VALIDATION[320:330]]
    save_predictions(site["env"]["FIRESTORE_EMULATOR_HOST"], steady + shifted("12", 250, hours[2]) + few + old)
    for version in ("10", "11", "12"):
        save_reference(db, version, REFERENCE)
    serving = Serving("11", "run", "0" * 64, f"gs://staged/{MODEL_NAME}/v11", "e11", now)
    state = DeploymentState(serving=serving, rollout=Rollout.of(rollout.start("11", "12", now), 25))
    store = DeploymentStore(db, MODEL_NAME)
    assert store.commit(store.read(), state)
    return {"stable": "11", "candidate": "12"}


def test_page_monitoring_card_draws_each_version_against_validation_serving_ones_first(
    live_site, browser, clean_db, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    monitored_versions(live_site, clean_db)
    context, page = open_page(browser, live_site, viewport={"width": 1000, "height": 1600})
    panels = page.locator("#monitoring-versions article")

    # The deployment arrives with /statistics: the versions in front of traffic move first once it has.
    expect(panels.locator("h3")).to_have_text(["Version 11 stable", "Version 12 candidate", "Version 10", "Version 9"])
    steady = page.get_by_role("article", name="Version 11")
    expect(steady.locator(".drift-state")).to_have_text("No drift: scores look like validation")
    expect(steady.locator("svg.histogram rect.live")).to_have_count(20)
    expect(steady.locator("svg.histogram rect.reference")).to_have_count(20)
    histogram = steady.get_by_role("img", name="Probabilities version 11 answered: live against validation", exact=True)
    expect(histogram).to_have_accessible_description(re.compile(r"^Share of answers in each of 20 probability bins"))
    expect(steady.locator("svg.accuracy polyline.estimated")).to_have_count(1)
    expect(steady.locator("svg.accuracy polyline.realised")).to_have_count(1)
    expect(steady.locator("svg.accuracy circle.estimated")).to_have_count(3)  # one per hour
    expect(steady.locator("svg.accuracy circle.realised")).to_have_count(3)
    accuracy = steady.get_by_role("img", name="Estimated and realised accuracy of version 11 per hour", exact=True)
    estimated = sum(max(p, 1 - p) for p, _ in VALIDATION[:300]) / 300
    said = f"Estimated {estimated:.1%} over the 24 hours; realised 80.0% on 150 answers."  # 30 of 150 wrong
    expect(accuracy).to_have_accessible_description(said)
    expect(steady).to_contain_text("300 predictions")
    expect(steady.locator(".legend li")).to_have_text(
        ["Live, last 24 hours", "Validation set", "Estimated (mean confidence)", "Realised (users' feedback)"]
    )

    drifting = page.get_by_role("article", name="Version 12")
    expect(drifting.locator(".drift-state")).to_contain_text("Drift: score_psi")
    expect(drifting.locator(".drift-state")).to_contain_text("positive_rate 1.000 differs from the reference")
    expect(drifting.locator(".estimate-caveat")).to_have_text(
        "While traffic drifts the estimated accuracy is optimistic: trust the feedback accuracy."
    )
    expect(steady.locator(".estimate-caveat")).to_have_count(0)
    expect(drifting.locator("svg.histogram rect.live")).to_have_count(20)
    # No answers from users: the estimate alone, and the words say so.
    expect(drifting.locator("svg.accuracy polyline.realised")).to_have_count(0)
    expect(drifting.locator("figure p.hint")).to_contain_text("no feedback yet.")

    few = page.get_by_role("article", name="Version 10")
    expect(few.locator(".drift-state")).to_have_text("Not enough predictions yet (20 of 200)")
    old = page.get_by_role("article", name="Version 9")
    expect(old.locator(".drift-state")).to_have_text(
        "No reference: this version was staged before monitoring, so nothing is compared"
    )
    expect(old.locator("svg.histogram rect.live")).to_have_count(20)
    expect(old.locator("svg.histogram rect.reference")).to_have_count(0)
    page.get_by_role("heading", name="Does live traffic still look like validation?").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "page-monitoring.png"), full_page=True)
    context.close()


def test_page_monitoring_error_replaces_the_card_until_it_loads_again(live_site, browser, clean_db) -> None:
    from playwright.sync_api import expect

    save_predictions(
        live_site["env"]["FIRESTORE_EMULATOR_HOST"], [monitored_prediction("3", 0.8, datetime.now(UTC), "fine")]
    )
    context, page = open_page(browser, live_site)
    versions = page.locator("#monitoring-versions")
    expect(versions.locator("article h3")).to_have_text(["Version 3"])
    expect(page.locator("#monitoring-summary")).to_have_text(
        "Each version's answers in the last 24 hours, compared with its answers on the validation set."
    )
    monitoring = f"{live_site['feedback'].url}/monitoring"

    page.route(monitoring, unavailable(5))
    page.get_by_role("button", name="Refresh monitoring").click()

    expect(page.locator("#monitoring-error")).to_have_text(
        "The monitoring service is unavailable right now. Try again in 5 seconds."
    )
    expect(versions).to_be_hidden()
    expect(page.locator("#monitoring-summary")).to_be_hidden()

    page.unroute(monitoring)
    page.get_by_role("button", name="Refresh monitoring").click()

    expect(page.locator("#monitoring-error")).to_be_hidden()
    expect(versions.locator("article h3")).to_have_text(["Version 3"])
    context.close()


def test_page_monitoring_without_traffic_says_so(live_site, browser, clean_db) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)

    expect(page.locator("#monitoring-summary")).to_have_text("No predictions in the last 24 hours.")
    expect(page.locator("#monitoring-versions")).to_be_hidden()
    context.close()


# --- Explanations -----------------------------------------------------------------------------------------------


def rewrite_predict_details(page, live_site, change) -> None:
    """predict's real answers to the page's POSTs, with `change` applied to their `details` (what another model
    would have answered); every other request passes untouched."""
    predict = live_site["predict"].url

    def rewrite(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        answer = route.fetch()
        body = answer.json()
        change(body["details"])
        route.fulfill(response=answer, json=body)

    page.route(lambda url: url.startswith(f"{predict}/"), rewrite)


def test_page_highlights_the_terms_that_weighed_most_in_two_colours_with_a_legend(
    live_site, browser, clean_db, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site, viewport={"width": 1000, "height": 1400})
    sent = intercept_predict(page, live_site, failures=[])
    review = "The pasta was wonderful and the staff were so friendly, but the dessert was awful and cold."

    page.get_by_label("Review text").fill(review)
    page.get_by_role("button", name="Analyze").click()

    explanation = page.locator("#explanation")
    expect(explanation).to_be_visible()
    expect(explanation.locator(".legend")).to_contain_text("pushes towards positive")
    expect(explanation.locator(".legend")).to_contain_text("pushes towards negative")
    expect(page.locator("#explanation-text")).to_have_text(review)  # the review itself, words marked in place
    positive = page.locator("#explanation-text mark.toward-positive")
    negative = page.locator("#explanation-text mark.toward-negative")
    assert positive.count() >= 1
    assert negative.count() >= 1
    marked = {m.lower() for m in positive.all_inner_texts()}
    assert marked & {"wonderful", "friendly"}, marked
    assert {m.lower() for m in negative.all_inner_texts()} & {"awful", "cold", "but"}
    terms = page.locator("#explanation-terms li")
    assert 1 <= terms.count() <= 10
    expect(terms.first).to_contain_text(re.compile(r"“.+” [+−]\d+\.\d\d \(towards (positive|negative)\)"))
    assert positive.first.get_attribute("title").split(": ")[1].startswith("+")
    assert '"explain":true' in sent[0]["body"]
    page.screenshot(path=str(screenshots / "page-explanation.png"), full_page=True)
    context.close()


def test_page_marks_apostrophe_terms_whether_the_model_splits_them_or_keeps_them_whole(
    live_site, browser, clean_db
) -> None:
    """The default tokenizer gives "didn't" as `didn`, `'t` (term "didn 't"); a model trained with
    --no-split-apostrophes keeps "wasn't" whole. Both mark the very words of the review."""
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    terms = [{"term": "didn 't", "weight": -1.25}, {"term": "wasn't", "weight": -0.5}, {"term": "warm", "weight": 0.25}]

    rewrite_predict_details(page, live_site, lambda details: details.update(explanation={"bias": 0.1, "terms": terms}))
    review = "I didn't like it and it wasn't warm."
    page.get_by_label("Review text").fill(review)
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#explanation-text")).to_have_text(review)
    negative = page.locator("#explanation-text mark.toward-negative")
    expect(negative).to_have_text(["didn", "'t", "wasn", "'t"])
    expect(page.locator("#explanation-text mark.toward-positive")).to_have_text(["warm"])
    context.close()


def test_page_without_an_explanation_in_the_answer_shows_no_highlights(live_site, browser, clean_db) -> None:
    """A model exported before explanations answers without one: the verdict alone, nothing left from before."""
    from playwright.sync_api import expect

    context, page = open_page(browser, live_site)
    page.get_by_label("Review text").fill(POSITIVE)
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#explanation")).to_be_visible()

    rewrite_predict_details(page, live_site, lambda details: details.pop("explanation"))
    page.get_by_label("Review text").fill("Cold fries, rude cashier and a dirty table. Never again.")
    page.get_by_role("button", name="Analyze").click()

    expect(page.locator("#result-label")).to_have_text("Negative")
    expect(page.locator("#explanation")).to_be_hidden()
    assert page.locator("#explanation-text mark").count() == 0
    context.close()
