"""The static page in a real browser (Debian's Chromium, headless, driven by Playwright) against the real
functions and the Firestore emulator: analyze, give feedback, see statistics change, page, and errors."""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev import services, website
from tests.functions.conftest import ORIGIN, call

CHROMIUM = Path("/usr/bin/chromium")
POSITIVE = "The pasta was wonderful and the staff were so friendly. Great value!"


@pytest.fixture(scope="module")
def site(function_env: dict, tmp_path_factory) -> Iterator[dict]:
    """The page built as the local stack builds it, served as a static site; predict and feedback allow its
    origin."""
    workdir = tmp_path_factory.mktemp("site")
    port = services.free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**function_env, "ALLOWED_ORIGINS": origin}
    root = workdir / "www"
    with (
        services.start_function("predict", workdir, env) as predict,
        services.start_function("feedback", workdir, env, ready_path="/statistics") as feedback,
    ):
        website.build(root, predict.url, feedback.url)
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
        with services.start("site", argv, url=origin, ready_path="/config.json", log_path=workdir / "site.log"):
            yield {"url": origin, "predict": predict, "feedback": feedback}


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


def open_page(browser, site: dict, **options):
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(site["url"])
    return context, page


def test_page_analyze_feedback_statistics_paging_and_errors(site, browser, clean_db, screenshots: Path) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(site["url"])

    expect(page.locator("#recent-empty")).to_be_visible()
    expect(page.locator("#stats-overall")).to_have_text("No feedback yet")

    # A positive review, by keyboard: type, Ctrl+Enter.
    page.get_by_label("Review text").fill("The pasta was wonderful and the staff were so friendly. Great value!")
    page.get_by_label("Review text").press("Control+Enter")
    expect(page.locator("#result-label")).to_have_text("Positive")
    expect(page.locator("#result-model")).to_contain_text("version")
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("#feedback-status")).to_have_text("Thanks, your answer counted.")
    expect(page.locator("#stats-overall")).to_have_text("100.0% right")
    page.screenshot(path=str(screenshots / "page-positive.png"), full_page=True)

    # A negative one, which the user says the model got wrong: the rate halves.
    page.get_by_label("Review text").fill("Cold fries, rude cashier and a dirty table. Never again.")
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#result-label")).to_have_text("Negative")
    page.get_by_role("button", name="No").click()
    expect(page.locator("#stats-overall")).to_have_text("50.0% right")
    expect(page.locator("#stats-counts")).to_have_text("2 predictions, 2 with feedback, 1 correct.")
    expect(page.locator("#stats-table tbody tr")).to_have_count(1)
    expect(page.locator("#stats-chart rect")).to_have_count(2)

    # Paging: twelve more predictions, newest first, ten a page.
    for n in range(12):
        assert call(site["predict"].url, {"text": f"review number {n}: nice"}).status == 201
    page.reload()
    expect(page.locator("#recent-list li")).to_have_count(10)
    expect(page.locator("#recent-list li").first).to_contain_text("review number 11")
    page.get_by_role("button", name="Older predictions").click()
    expect(page.locator("#recent-list li")).to_have_count(4)
    expect(page.locator("#recent-list li").last).to_contain_text("The pasta was wonderful")
    expect(page.get_by_role("button", name="Older predictions")).to_be_hidden()
    page.get_by_role("button", name="Newest").click()
    expect(page.locator("#recent-list li").first).to_contain_text("review number 11")

    # Errors in plain words: too long, then predict down.
    page.get_by_label("Review text").fill("x" * 5001)
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#analyze-error")).to_have_text("The review is too long: 5,001 characters, the limit is 5,000.")
    site["predict"].stop()
    page.get_by_label("Review text").fill("Is anybody there?")
    page.get_by_role("button", name="Analyze").click()
    expect(page.locator("#analyze-error")).to_contain_text("Cannot reach the prediction service")
    page.screenshot(path=str(screenshots / "page-predict-down.png"), full_page=True)

    allowed = {site["url"], site["predict"].url, site["feedback"].url}
    origins = {f"{urllib.parse.urlsplit(u).scheme}://{urllib.parse.urlsplit(u).netloc}" for u in requested}
    assert origins <= allowed, origins - allowed
    context.close()


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


def test_page_on_a_phone_has_no_horizontal_scroll(site, browser, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800}, is_mobile=True)
    page = context.new_page()
    page.goto(site["url"])
    page.wait_for_selector("#stats-overall:not(:text('Loading…'))")

    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 376)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className)"
    )

    assert width <= 375, wide
    page.screenshot(path=str(screenshots / "page-phone.png"), full_page=True)
    context.close()
