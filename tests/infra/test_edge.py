"""The load balancer in front of the page and the API (infra/terraform/edge.tf), checked offline: every call the page
makes reaches, through the URL map's rules as Terraform computes them, a route its function serves; the page and the
API share the load balancer's origin; Cloud Armor limits each API per client; the variables refuse what Cloud
Armor, DNS or the Budget API would refuse at apply time; the budget exists only with a billing account."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.terraform_config import REPO_ROOT, TERRAFORM, locals_, name_set, parsed, resources, unquote
from tests.infra.test_terraform import terraform

EDGE = TERRAFORM / "edge.tf"


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> list[dict[str, Any]]:
    """local.edge_routes as terraform evaluates it (the locals block of edge.tf on its own), by priority."""
    directory = tmp_path_factory.mktemp("routes")
    (block,) = re.findall(r"^locals \{\n  edge_apis = .*?^\}\n", EDGE.read_text(), re.M | re.S)
    (directory / "main.tf").write_text(block)
    result = terraform(directory, "console", stdin="jsonencode(local.edge_routes)\n")
    assert result.returncode == 0, result.stderr
    by_priority = json.loads(json.loads(result.stdout))
    return [{"priority": int(p), **rule} for p, rule in sorted(by_priority.items(), key=lambda item: int(item[0]))]


def route(routes: list[dict[str, Any]], path: str) -> tuple[str, str]:
    """(function, the path it receives) for a request path, or ("site", path) for the backend bucket: the first rule
    by priority whose full path equals the path or whose prefix starts it, its match rewritten to /."""
    for rule in routes:
        if rule["full_path_match"] is not None and path == rule["full_path_match"]:
            return rule["api"], "/"
        if rule["prefix_match"] is not None and path.startswith(rule["prefix_match"]):
            return rule["api"], "/" + path.removeprefix(rule["prefix_match"])
    return "site", path


def served_routes(function: str) -> set[str]:
    """The paths a function's ROUTES table (functions/<name>/main.py) serves."""
    main = (REPO_ROOT / "functions" / function / "main.py").read_text()
    (table,) = re.findall(r"^ROUTES = \{\n(.*?)^\}", main, re.M | re.S)
    return set(re.findall(r'^    "(/[\w/-]*)":', table, re.M))


def page_calls() -> list[tuple[str, str]]:
    """(function, path after its URL) of every call app.js makes to the URLs of config.json."""
    app = (REPO_ROOT / "frontend" / "app.js").read_text()
    return re.findall(r"call(?:WithRetries)?\(`?(?:\$\{)?state\.config\.(\w+)_url\}?([/\w-]*)", app)


def site_config() -> dict[str, str]:
    """config.json as storage.tf writes it."""
    content = resources("google_storage_bucket_object")["site_config"]["content"]
    return dict(re.findall(r'(\w+_url)\s*=\s*"([^"]+)"', content))


ROUTING = [
    ("/api/predict", ("predict", "/")),
    ("/api/predict/healthz", ("predict", "/healthz")),
    ("/api/feedback", ("feedback", "/")),
    ("/api/feedback/statistics", ("feedback", "/statistics")),
    ("/api/feedback/predictions", ("feedback", "/predictions")),
    ("/api/predictions", ("site", "/api/predictions")),  # no prefix of one function takes another name
    ("/api/feedbackx/statistics", ("site", "/api/feedbackx/statistics")),
    ("/api/", ("site", "/api/")),
    ("/", ("site", "/")),
    ("/config.json", ("site", "/config.json")),
]


@pytest.mark.parametrize(("path", "expected"), ROUTING)
def test_edge_routes_send_each_path_to_its_function_with_the_prefix_rewritten(routes, path, expected) -> None:
    assert route(routes, path) == expected


def test_edge_routes_cover_every_api_and_the_url_map_applies_them(routes) -> None:
    url_map = resources("google_compute_url_map")["main"]
    (matcher,) = url_map["path_matcher"]
    dynamic = [spec for block in matcher["dynamic"] for label, spec in block.items() if unquote(label) == "route_rules"]

    assert {rule["api"] for rule in routes} == name_set(locals_()["edge_apis"]) == {"predict", "feedback"}
    assert len({rule["priority"] for rule in routes}) == len(routes)
    assert [spec["for_each"] for spec in dynamic] == ["${local.edge_routes}"]
    assert url_map["default_service"] == matcher["default_service"] == "${google_compute_backend_bucket.site.id}"


def test_edge_every_call_of_the_page_reaches_a_route_its_function_serves(routes) -> None:
    config = site_config()
    calls = page_calls()

    assert len(calls) >= 4  # the pattern sees app.js's calls
    for name, suffix in calls:
        function, path = route(routes, config[f"{name}_url"] + suffix)
        assert function == name, (name, suffix)
        assert path in served_routes(function), (name, suffix, path)


def test_edge_url_map_tests_agree_with_the_routes(routes) -> None:
    """Google runs the map's `test` blocks at apply; they must say what the routes above say."""
    tests = resources("google_compute_url_map")["main"]["test"]

    assert len(tests) >= 4
    for case in tests:
        path = unquote(case["path"])
        target = re.search(r'backend_service\.api\["(\w+)"\]|backend_bucket\.(site)', case["service"])
        function, forwarded = route(routes, path)
        assert function == (target.group(1) or target.group(2)), path
        if "expected_output_url" in case:
            assert unquote(case["expected_output_url"]).endswith("}" + forwarded), path


def test_edge_page_and_api_share_the_load_balancers_origin() -> None:
    locals_all = locals_()
    objects = resources("google_storage_bucket_object")
    terraform_text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    page = (REPO_ROOT / "frontend" / "index.html").read_text()

    assert set(site_config().values()) == {"/api/predict", "/api/feedback"}  # same-origin paths
    assert locals_all["site_origin"] == "${local.edge_origin}"
    assert locals_all["cors_origins"].startswith('${join(",", concat([local.site_origin]')
    assert "https://storage.googleapis.com" not in terraform_text  # no longer an allowed origin, nor the page URL
    # The CSP: 'self' and nothing added in the cloud (the local stack adds its function origins).
    assert "connect-src 'self' ${connect_origins};" in page
    assert objects["site_index"]["content"].count('connect_origins = ""') == 1


def test_edge_api_backends_pass_through_their_own_cloud_armor_policy() -> None:
    backends = resources("google_compute_backend_service")["api"]
    policy = resources("google_compute_security_policy")["api"]
    negs = resources("google_compute_region_network_endpoint_group")["api"]
    rules = {rule["priority"]: rule for rule in policy["rule"]}
    ban = rules[1000]
    limit = ban["rate_limit_options"][0]

    assert backends["for_each"] == policy["for_each"] == negs["for_each"] == "${local.edge_apis}"
    assert backends["security_policy"] == "${google_compute_security_policy.api[each.key].id}"
    assert unquote(backends["load_balancing_scheme"]) == "EXTERNAL_MANAGED"
    assert negs["cloud_run"][0]["service"] == "${google_cloudfunctions2_function.main[each.key].name}"  # gen2
    assert unquote(ban["action"]) == "rate_based_ban"
    assert unquote(limit["enforce_on_key"]) == "IP"
    assert unquote(limit["exceed_action"]) == "deny(429)"
    assert limit["ban_duration_sec"] == "${var.rate_limits[each.key].ban_s}"
    assert limit["rate_limit_threshold"][0]["count"] == "${var.rate_limits[each.key].requests}"
    assert unquote(rules[max(rules)]["action"]) == "allow"  # the default rule, last
    assert max(rules) == 2147483647
    assert all(unquote(rules[p]["action"]).startswith("deny(") for p in rules if p < 1000)  # WAF first


def test_edge_https_only_with_a_domain_and_port_80_then_redirects() -> None:
    counted = [
        "google_compute_managed_ssl_certificate",
        "google_compute_target_https_proxy",
        "google_compute_ssl_policy",
    ]
    proxy = resources("google_compute_target_http_proxy")["main"]
    rules = resources("google_compute_global_forwarding_rule")

    assert all(resources(kind)["main"]["count"] == "${local.edge_https ? 1 : 0}" for kind in counted)
    assert rules["https"]["count"] == "${local.edge_https ? 1 : 0}"
    assert "count" not in rules["http"]
    assert proxy["url_map"].startswith("${local.edge_https ? google_compute_url_map.https_redirect[0].id")
    assert {unquote(r["load_balancing_scheme"]) for r in rules.values()} == {"EXTERNAL_MANAGED"}


def test_edge_budget_only_with_a_billing_account_notifying_the_alert_channel() -> None:
    budget = resources("google_billing_budget")["main"]
    providers = [body for block in parsed()["provider"] for name, body in block.items() if unquote(name) == "google"]
    (billing,) = [body for body in providers if unquote(body.get("alias")) == "billing"]

    assert budget["count"] == '${var.billing_account != "" ? 1 : 0}'
    assert budget["provider"] == "${google.billing}"
    assert billing["user_project_override"] is True  # the Budget API needs a quota project with user credentials
    assert budget["dynamic"][0]['"threshold_rules"']["for_each"] == "${var.budget_thresholds}"
    assert budget["all_updates_rule"][0]["monitoring_notification_channels"] == "${local.notification_channels}"


def edge_module(directory: Path, variables: dict[str, Any]) -> Path:
    """A module of variables.tf's load-balancer and budget variables, copied as written, with `variables` as tfvars:
    terraform plans it offline (no provider)."""
    names = ("domain", "rate_limits", "billing_account", "budget_amount", "budget_thresholds")
    text = (TERRAFORM / "variables.tf").read_text()
    blocks = [re.search(rf'^variable "{name}" \{{\n.*?^\}}\n', text, re.M | re.S).group(0) for name in names]
    (directory / "main.tf").write_text("\n".join(blocks))
    (directory / "terraform.tfvars.json").write_text(json.dumps(variables))
    return directory


LIMITS = {
    "predict": {"requests": 60, "interval_s": 60, "ban_s": 600},
    "feedback": {"requests": 120, "interval_s": 60, "ban_s": 600},
}

# tfvars, and the variable whose check refuses them (None: valid).
EDGE_VARIABLES = [
    ({}, None),
    ({"domain": "sentiment.example.com"}, None),
    ({"domain": "https://sentiment.example.com"}, "domain"),
    ({"domain": "Sentiment.example.com"}, "domain"),
    ({"domain": "sentiment.example.com."}, "domain"),
    ({"domain": "localhost"}, "domain"),
    ({"rate_limits": {**LIMITS, "predict": {"requests": 10, "interval_s": 10, "ban_s": 60}}}, None),
    ({"rate_limits": {"predict": LIMITS["predict"]}}, "rate_limits"),
    ({"rate_limits": {**LIMITS, "monitoring": LIMITS["predict"]}}, "rate_limits"),
    ({"rate_limits": {**LIMITS, "predict": {"requests": 60, "interval_s": 45, "ban_s": 600}}}, "rate_limits"),
    ({"rate_limits": {**LIMITS, "predict": {"requests": 0, "interval_s": 60, "ban_s": 600}}}, "rate_limits"),
    ({"rate_limits": {**LIMITS, "predict": {"requests": 60, "interval_s": 60, "ban_s": 30}}}, "rate_limits"),
    ({"billing_account": "012345-6789AB-CDEF01"}, None),
    ({"billing_account": "billingAccounts/012345-6789AB-CDEF01"}, "billing_account"),
    ({"budget_amount": 0}, "budget_amount"),
    ({"budget_amount": 12.5}, "budget_amount"),
    ({"budget_thresholds": [0.5, 1.0, 1.5]}, None),
    ({"budget_thresholds": []}, "budget_thresholds"),
    ({"budget_thresholds": [0, 1.0]}, "budget_thresholds"),
    ({"budget_thresholds": [50, 90]}, "budget_thresholds"),  # percents instead of shares
]


@pytest.mark.parametrize(("variables", "rejected_by"), EDGE_VARIABLES, ids=str)
def test_edge_variables_fail_the_plan_on_values_the_apply_would_refuse(
    tmp_path: Path, variables: dict[str, Any], rejected_by: str | None
) -> None:
    plan = terraform(edge_module(tmp_path, variables), "plan", "-input=false")

    assert (plan.returncode == 0) == (rejected_by is None), plan.stdout + plan.stderr
    if rejected_by is not None:
        assert f"{rejected_by} must" in plan.stderr
