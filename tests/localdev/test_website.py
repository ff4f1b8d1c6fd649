"""localdev.website: the page as deployed, its config.json and the Content-Security-Policy rendered from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localdev import website


def connect_src(index_html: str) -> list[str]:
    policy = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]*)"', index_html).group(1)
    directives = {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}
    return directives["connect-src"]


def test_website_build_names_the_two_function_origins_in_the_csp_and_the_urls_in_config(tmp_path: Path) -> None:
    predict, feedback = "http://127.0.0.1:8080", "https://feedback-abc-ew.a.run.app/"

    website.build(tmp_path / "site", predict, feedback)

    index = (tmp_path / "site" / "index.html").read_text()
    assert connect_src(index) == ["'self'", "http://127.0.0.1:8080", "https://feedback-abc-ew.a.run.app"]
    assert "$" not in index
    config = json.loads((tmp_path / "site" / "config.json").read_text())
    assert config == {"predict_url": predict, "feedback_url": feedback, "prediction_retention_days": 30}
    assert (tmp_path / "site" / "favicon.svg").is_file()


def test_website_build_states_the_retention_predict_was_given(tmp_path: Path) -> None:
    website.build(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2", retention_days=7)

    assert json.loads((tmp_path / "config.json").read_text())["prediction_retention_days"] == 7
    assert not (tmp_path / "site" / "README.md").exists()


def test_website_build_names_an_origin_shared_by_both_functions_once(tmp_path: Path) -> None:
    host = "https://europe-west1-my-project.cloudfunctions.net"

    website.build(tmp_path, f"{host}/predict", f"{host}/feedback")

    assert connect_src((tmp_path / "index.html").read_text()) == ["'self'", host]


def test_website_build_with_same_origin_paths_as_behind_the_load_balancer_adds_no_origin(tmp_path: Path) -> None:
    website.build(tmp_path, "/api/predict", "/api/feedback")

    assert connect_src((tmp_path / "index.html").read_text()) == ["'self'"]
    assert json.loads((tmp_path / "config.json").read_text())["predict_url"] == "/api/predict"


@pytest.mark.parametrize("url", ["//evil.example.com/api", "api/predict"])
def test_website_connect_origins_of_a_scheme_relative_or_bare_path_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        website.connect_origins(url, "/api/feedback")


def test_website_build_replaces_what_an_earlier_build_left(tmp_path: Path) -> None:
    (tmp_path / "stale.js").write_text("old")

    website.build(tmp_path, "http://127.0.0.1:1", "http://127.0.0.1:2")

    assert not (tmp_path / "stale.js").exists()


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://example.com", "https://", "javascript:alert(1)"])
def test_website_origin_of_anything_but_an_http_url_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        website.origin(url)
