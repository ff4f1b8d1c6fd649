"""The static page as it is deployed: the files of frontend/, a config.json naming the function URLs, and
index.html rendered so that its Content-Security-Policy lets the page connect to those origins only.

Locally the functions listen on ports of their own, other origins than the page's, which the policy names. In the
cloud the load balancer serves the page and the API on one origin (infra/terraform/edge.tf): config.json holds
same-origin paths (/api/predict), which 'self' covers, and Terraform renders the same template with no origin
added (infra/terraform/storage.tf; a bucket cannot send a Content-Security-Policy header, hence the meta element).
"""

from __future__ import annotations

import json
import shutil
import string
import urllib.parse
from pathlib import Path

FRONTEND_DIR = Path(__file__).resolve().parents[1] / "frontend"


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a Content-Security-Policy source names."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def connect_origins(predict_url: str, feedback_url: str) -> str:
    """The origins the page may connect to besides its own, space-separated, each once; a same-origin path
    (/api/predict, as behind the load balancer) adds none."""
    urls = [url for url in (predict_url, feedback_url) if not (url.startswith("/") and not url.startswith("//"))]
    return " ".join(dict.fromkeys(origin(url) for url in urls))


def build(destination: Path, predict_url: str, feedback_url: str, retention_days: int = 30) -> None:
    """Write the site into destination (replaced): the page's files, config.json and the rendered index.html.

    retention_days: predict's PREDICTION_RETENTION_DAYS, which the page states (how long a review is kept).
    """
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(FRONTEND_DIR, destination, ignore=shutil.ignore_patterns("README.md"))
    index = destination / "index.html"
    # substitute, not safe_substitute: a placeholder left unfilled would fail here, not silently in a browser.
    template = string.Template(index.read_text())
    index.write_text(template.substitute(connect_origins=connect_origins(predict_url, feedback_url)))
    config = {"predict_url": predict_url, "feedback_url": feedback_url, "prediction_retention_days": retention_days}
    (destination / "config.json").write_text(json.dumps(config, indent=2) + "\n")
