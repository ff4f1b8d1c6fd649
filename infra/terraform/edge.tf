# The one way in from the internet: a global external Application Load Balancer (EXTERNAL_MANAGED) that serves
# the page from the site bucket at / and the public API under /api/<function>/, every API request first through
# a Cloud Armor policy that rate-limits and bans per client address. predict and feedback accept only internal and
# load-balancer traffic (locals.tf, ingress), so nobody reaches them around it (infra/checkov/public_behind_lb.yaml).
# The page and the API share one origin of their own: no CORS between them, and the page's Content-Security-Policy
# connects to 'self' only (storage.tf).

# The API behind the load balancer and the URL map's rules for it, by priority: /api/<name> alone is the function
# <name>'s /, /api/<name>/x its /x. Two rules per function: a prefix /api/<name> alone would also take /api/<name>x,
# and its rewrite would make /api/<name>/x //x. (tests/infra/test_edge.py evaluates this block on its own.)
locals {
  edge_apis = toset(["predict", "feedback"])
  edge_routes = { for i, route in flatten([
    for name in sort(tolist(local.edge_apis)) : [
      { api = name, full_path_match = "/api/${name}", prefix_match = null },
      { api = name, full_path_match = null, prefix_match = "/api/${name}/" },
    ]
  ]) : tostring(10 + i) => route }
}

locals {
  # With a domain: https://domain (Google-managed certificate) and port 80 redirects to it. Without: plain http on
  # the load balancer's address (README: the trade-off).
  edge_https  = var.domain != ""
  edge_origin = local.edge_https ? "https://${var.domain}" : "http://${google_compute_global_address.main.address}"
  # The host the URL map's own tests (below) send; any host reaches the same routes.
  edge_test_host = local.edge_https ? var.domain : "sentiment.example.com"
}

resource "google_compute_global_address" "main" {
  name        = "sentiment-edge"
  description = "The load balancer's address: the page and the API (DNS: the domain's A record points here)."

  depends_on = [google_project_service.main]
}

# Cloud Functions gen2 run as Cloud Run services: a serverless NEG of type Cloud Run reaches the function's service,
# every revision of it, so the redeploy's traffic split between revisions holds behind the load balancer too.
resource "google_compute_region_network_endpoint_group" "api" {
  for_each = local.edge_apis

  name                  = "sentiment-${each.key}"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = google_cloudfunctions2_function.main[each.key].name
  }
}

# One policy per function, so that each has its own limit: a client (its address as the load balancer sees it) that
# sends more than rate_limits[<name>].requests in interval_s is answered 429 and banned for ban_s.
resource "google_compute_security_policy" "api" {
  for_each = local.edge_apis

  name        = "sentiment-${each.key}"
  description = "Per-client rate limit with a ban, and WAF rules, in front of ${each.key}."
  type        = "CLOUD_ARMOR"

  # Preconfigured WAF rules before the rate limit (whose conforming requests are allowed without going further),
  # only those that read no review text: the SQL-injection and script sets (sqli-, xss-v33-stable) refuse
  # ordinary reviews with quotes or angle brackets. Written out: checkov reads no rule made by a dynamic block.
  rule {
    action      = "deny(403)"
    priority    = 100
    description = "CVE-2021-44228 (Log4j) lookups"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('cve-canary')"
      }
    }
  }

  rule {
    action      = "deny(403)"
    priority    = 200
    description = "Known scanners (user agents)"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('scannerdetection-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    action      = "deny(403)"
    priority    = 300
    description = "HTTP request smuggling, response splitting, header injection"
    match {
      expr {
        expression = "evaluatePreconfiguredWaf('protocolattack-v33-stable', {'sensitivity': 1})"
      }
    }
  }

  rule {
    action      = "rate_based_ban"
    priority    = 1000
    description = "Per client address: over ${var.rate_limits[each.key].requests} requests in ${var.rate_limits[each.key].interval_s} s, 429 and a ban of ${var.rate_limits[each.key].ban_s} s"
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
    rate_limit_options {
      conform_action   = "allow"
      exceed_action    = "deny(429)"
      enforce_on_key   = "IP"
      ban_duration_sec = var.rate_limits[each.key].ban_s
      rate_limit_threshold {
        count        = var.rate_limits[each.key].requests
        interval_sec = var.rate_limits[each.key].interval_s
      }
    }
  }

  rule {
    action      = "allow"
    priority    = 2147483647
    description = "Default: allow (the rules above refuse)"
    match {
      versioned_expr = "SRC_IPS_V1"
      config {
        src_ip_ranges = ["*"]
      }
    }
  }

  depends_on = [google_project_service.main]
}

resource "google_compute_backend_service" "api" {
  for_each = local.edge_apis

  name                  = "sentiment-${each.key}"
  description           = "${each.key} (Cloud Functions gen2) through its serverless NEG, behind Cloud Armor."
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  security_policy       = google_compute_security_policy.api[each.key].id

  backend {
    group = google_compute_region_network_endpoint_group.api[each.key].id
  }

  # Every request logged with Cloud Armor's verdict: who was limited or banned, and why.
  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

# The page: the site bucket's objects (its website configuration serves index.html at /).
resource "google_compute_backend_bucket" "site" {
  name        = "sentiment-site"
  description = "The static page (the site bucket)."
  bucket_name = google_storage_bucket.site.name
  enable_cdn  = var.site_cdn

  depends_on = [google_project_service.main]
}

resource "google_compute_url_map" "main" {
  name            = "sentiment-edge"
  description     = "/ the page, /api/predict and /api/feedback the functions (prefix rewritten to /)."
  default_service = google_compute_backend_bucket.site.id

  host_rule {
    hosts        = ["*"]
    path_matcher = "main"
  }

  path_matcher {
    name            = "main"
    default_service = google_compute_backend_bucket.site.id

    dynamic "route_rules" {
      for_each = local.edge_routes
      content {
        priority = tonumber(route_rules.key)
        service  = google_compute_backend_service.api[route_rules.value.api].id
        match_rules {
          full_path_match = route_rules.value.full_path_match
          prefix_match    = route_rules.value.prefix_match
        }
        route_action {
          url_rewrite {
            path_prefix_rewrite = "/" # the matched part: /api/<name> or /api/<name>/
          }
        }
      }
    }
  }

  # Google runs these on every change of the map and refuses one that fails: the page's own calls reach the
  # function's own routes (a mistake here fails the apply instead of serving 404s).
  test {
    description         = "POST /api/predict is predict's /"
    host                = local.edge_test_host
    path                = "/api/predict"
    service             = google_compute_backend_service.api["predict"].id
    expected_output_url = "http://${local.edge_test_host}/"
  }

  test {
    description         = "/api/predict/healthz is predict's /healthz"
    host                = local.edge_test_host
    path                = "/api/predict/healthz"
    service             = google_compute_backend_service.api["predict"].id
    expected_output_url = "http://${local.edge_test_host}/healthz"
  }

  test {
    description         = "/api/feedback/statistics is feedback's /statistics"
    host                = local.edge_test_host
    path                = "/api/feedback/statistics"
    service             = google_compute_backend_service.api["feedback"].id
    expected_output_url = "http://${local.edge_test_host}/statistics"
  }

  test {
    description = "/ is the page"
    host        = local.edge_test_host
    path        = "/"
    service     = google_compute_backend_bucket.site.id
  }
}

# HTTPS when a domain is set: a Google-managed certificate, provisioned once the domain's A record points at the
# address (up to an hour), and TLS 1.2 or later.
resource "google_compute_managed_ssl_certificate" "main" {
  count = local.edge_https ? 1 : 0

  # Named by the domain: a new domain's certificate is created before the old one goes (create_before_destroy).
  name = "sentiment-edge-${substr(sha256(var.domain), 0, 8)}"
  managed {
    domains = [var.domain]
  }

  lifecycle {
    create_before_destroy = true # a new domain gets its certificate before the old one is let go
  }

  depends_on = [google_project_service.main]
}

resource "google_compute_ssl_policy" "main" {
  count = local.edge_https ? 1 : 0

  name            = "sentiment-edge"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"

  depends_on = [google_project_service.main]
}

resource "google_compute_target_https_proxy" "main" {
  count = local.edge_https ? 1 : 0

  name             = "sentiment-edge"
  url_map          = google_compute_url_map.main.id
  ssl_certificates = [google_compute_managed_ssl_certificate.main[0].id]
  ssl_policy       = google_compute_ssl_policy.main[0].id
}

resource "google_compute_global_forwarding_rule" "https" {
  count = local.edge_https ? 1 : 0

  name                  = "sentiment-edge-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.main.id
  ip_protocol           = "TCP"
  port_range            = "443"
  target                = google_compute_target_https_proxy.main[0].id
}

# Port 80: with a domain, only a redirect to https; without one, the page and the API themselves.
resource "google_compute_url_map" "https_redirect" {
  count = local.edge_https ? 1 : 0

  name        = "sentiment-edge-https-redirect"
  description = "http -> https"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "main" {
  name    = "sentiment-edge-http"
  url_map = local.edge_https ? google_compute_url_map.https_redirect[0].id : google_compute_url_map.main.id
}

resource "google_compute_global_forwarding_rule" "http" {
  name                  = "sentiment-edge-http"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.main.id
  ip_protocol           = "TCP"
  port_range            = "80"
  target                = google_compute_target_http_proxy.main.id
}

# A monthly budget on the project, when a billing account is given: e-mails the billing account's administrators
# and the alert channel (monitoring.tf, alert_email) at each threshold of actual spend. A budget alerts; it does not
# stop spending (README: what bounds the bill).
resource "google_billing_budget" "main" {
  count    = var.billing_account != "" ? 1 : 0
  provider = google.billing

  billing_account = var.billing_account
  display_name    = "sentiment ${var.project_id}"

  budget_filter {
    projects        = ["projects/${data.google_project.main.number}"]
    calendar_period = "MONTH"
  }

  amount {
    specified_amount {
      units = tostring(var.budget_amount) # in the billing account's currency
    }
  }

  dynamic "threshold_rules" {
    for_each = var.budget_thresholds
    content {
      threshold_percent = threshold_rules.value
    }
  }

  all_updates_rule {
    monitoring_notification_channels = local.notification_channels
    disable_default_iam_recipients   = false
  }

  depends_on = [google_project_service.main]
}
