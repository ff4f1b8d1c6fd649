# Watching the model in production: log-based metrics over the JSON lines the code writes (sentiment_core.logs),
# alert policies, MLflow's uptime check and the serving dashboard (dashboards/serving.json). docs/alerts.md says
# what each alert watches, its threshold and why.
#
# This first block holds plain values only (no resource, variable or data source): tests/infra/test_alerts.py
# has terraform evaluate it offline and runs every log filter below against lines the real code writes.
locals {
  # Cloud Run puts a function's JSON lines in jsonPayload (severity and time become the entry's own fields). A
  # gen2 function's Cloud Run service has the function's name (locals.tf `functions`).
  run_logs      = "resource.type=\"cloud_run_revision\""
  public_logs   = "${local.run_logs} AND resource.labels.service_name=(\"predict\" OR \"feedback\" OR \"feedback-operator\")"
  watcher_logs  = "${local.run_logs} AND resource.labels.service_name=(\"registry-watcher\" OR \"registry-webhook\")"
  redeploy_logs = "${local.run_logs} AND resource.labels.service_name=\"on-production-changed\""

  # One counter per kind of line. `labels`: fields of the line copied into the metric's labels (EXTRACT of
  # jsonPayload.<label>), with their descriptions; a gen2 function's service name is a label of the resource.
  log_metrics = {
    sentiment_deploy_refused = {
      description = "The deploy gate refused a promoted version, or the redeploy an event naming another folder (event deploy_refused)."
      filter      = "${local.run_logs} AND resource.labels.service_name=(\"registry-watcher\" OR \"registry-webhook\" OR \"on-production-changed\") AND jsonPayload.event=\"deploy_refused\""
      labels = {
        model_version = "The refused version."
        reason        = "Why it was refused (gate.judge's reason code, or model_uri_not_allowed from the redeploy)."
      }
    }
    sentiment_rollout_rolled_back = {
      description = "A progressive rollout ended with the stable version back (registry_watcher, event rollout_rolled_back)."
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"rollout_rolled_back\""
      labels = {
        model_version = "The candidate version that was rolled back."
        reason        = "The rollout policy's reason (feedback_worse, server_errors, max_time, aborted, ...)."
      }
    }
    sentiment_deploy_failed = {
      description = "A redeploy of predict failed; Pub/Sub delivers the event again, then dead-letters it (event deploy_failed)."
      filter      = "${local.redeploy_logs} AND jsonPayload.event=\"deploy_failed\" AND severity>=ERROR"
      labels = {
        model_version = "The version whose deploy failed."
      }
    }
    sentiment_event_unprocessable = {
      description = "A Pub/Sub message the redeploy can never process; it ends in the dead-letter topic (event event_unprocessable)."
      filter      = "${local.redeploy_logs} AND jsonPayload.event=\"event_unprocessable\" AND severity>=ERROR"
      labels      = {}
    }
    sentiment_drift_detected = {
      description = "A version's live traffic drifted from its reference (registry_watcher's drift evaluation, event drift_detected)."
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"drift_detected\""
      labels = {
        model_version = "The drifting version."
      }
    }
    sentiment_drift_resolved = {
      description = "A drifting version's traffic came back to its reference (event drift_resolved)."
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"drift_resolved\""
      labels = {
        model_version = "The version whose drift resolved."
      }
    }
    sentiment_monitoring_evaluated = {
      description = "The scheduled drift evaluation of a version in service (one a minute per version: its heartbeat)."
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"monitoring_evaluated\""
      labels = {
        model_version = "The evaluated version."
      }
    }
    sentiment_monitoring_failed = {
      description = "The scheduled drift evaluation could not read or write Firestore (event monitoring_failed)."
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"monitoring_failed\" AND severity>=ERROR"
      labels      = {}
    }
    sentiment_server_errors = {
      description = "5xx answers of predict and feedback, as their request lines record them (sentiment_core.web.serve)."
      filter      = "${local.public_logs} AND jsonPayload.status>=500"
      labels = {
        path   = "The route (/, /healthz, /statistics, /predictions)."
        status = "The HTTP status (500, 503, ...)."
      }
    }
    sentiment_predictions = {
      description = "predict's answered requests (201) per model version: a batch request counts once."
      filter      = "${local.run_logs} AND resource.labels.service_name=\"predict\" AND jsonPayload.http_method=\"POST\" AND jsonPayload.path=\"/\" AND jsonPayload.status=201"
      labels = {
        model_version = "The version that answered (empty on an instance's first request, before its model is loaded)."
      }
    }
    sentiment_feedback_answers = {
      description = "feedback's recorded answers (200 on POST /)."
      filter      = "${local.run_logs} AND resource.labels.service_name=\"feedback\" AND jsonPayload.http_method=\"POST\" AND jsonPayload.path=\"/\" AND jsonPayload.status=200"
      labels      = {}
    }
    # Cloud Scheduler has no built-in metric of failed attempts; each attempt is logged, a failed one at ERROR.
    sentiment_scheduler_failures = {
      description = "Failed attempts of the Scheduler job that ticks the registry watcher (scheduler.tf)."
      filter      = "resource.type=\"cloud_scheduler_job\" AND resource.labels.job_id=\"registry-watcher-tick\" AND severity>=ERROR"
      labels      = {}
    }
  }

  # Distributions of a number the evaluation line carries (jsonPayload.<field>), per model version: accuracy per
  # version lives in Firestore, which Cloud Monitoring cannot read, so the watcher logs it once a minute. A line
  # without the number (no feedback yet) is not counted: the filter asks for it.
  log_distributions = {
    sentiment_estimated_accuracy = {
      description = "The label-free accuracy estimate (mean max(p, 1 - p)) of a version over the drift window."
      field       = "estimated_accuracy"
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"monitoring_evaluated\" AND jsonPayload.estimated_accuracy>=0"
    }
    sentiment_feedback_accuracy = {
      description = "The share of user answers that agreed with a version over the drift window."
      field       = "feedback_accuracy"
      filter      = "${local.watcher_logs} AND jsonPayload.event=\"monitoring_evaluated\" AND jsonPayload.feedback_accuracy>=0"
    }
  }

  # Alerts on the counters above: an incident when `metric` counts more than `above` lines within `window`,
  # per value of `group_by` (docs/alerts.md).
  log_alerts = {
    drift = {
      metric   = "sentiment_drift_detected"
      resource = "cloud_run_revision"
      title    = "Drift detected on a model version"
      above    = 0
      window   = "300s"
      group_by = ["metric.label.model_version"]
      severity = "WARNING"
    }
    rollback = {
      metric   = "sentiment_rollout_rolled_back"
      resource = "cloud_run_revision"
      title    = "A rollout was rolled back"
      above    = 0
      window   = "300s"
      group_by = ["metric.label.model_version", "metric.label.reason"]
      severity = "WARNING"
    }
    deploy_refused = {
      metric   = "sentiment_deploy_refused"
      resource = "cloud_run_revision"
      title    = "The deploy gate refused a promoted version"
      above    = 0
      window   = "300s"
      group_by = ["metric.label.model_version", "metric.label.reason"]
      severity = "WARNING"
    }
    # A failed evaluation is tried again on the next tick (its run was not claimed): three failures in half an
    # hour, not one, is monitoring that has stopped.
    monitoring_failed = {
      metric   = "sentiment_monitoring_failed"
      resource = "cloud_run_revision"
      title    = "The drift evaluation fails"
      above    = 2
      window   = "1800s"
      group_by = []
      severity = "ERROR"
    }
    # The tick runs every minute and is not retried (the next tick is the retry): three failures in ten minutes,
    # not one, is a watcher that cannot work.
    scheduler_failures = {
      metric   = "sentiment_scheduler_failures"
      resource = "cloud_scheduler_job"
      title    = "The watcher's Scheduler ticks fail"
      above    = 2
      window   = "600s"
      group_by = []
      severity = "ERROR"
    }
  }
}

resource "google_logging_metric" "main" {
  for_each = local.log_metrics

  name             = each.key
  description      = each.value.description
  filter           = each.value.filter
  label_extractors = { for label in keys(each.value.labels) : label => "EXTRACT(jsonPayload.${label})" }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = each.key

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.key
        value_type  = "STRING"
        description = labels.value
      }
    }
  }

  depends_on = [google_project_service.main]
}

resource "google_logging_metric" "distribution" {
  for_each = local.log_distributions

  name             = each.key
  description      = each.value.description
  filter           = each.value.filter
  value_extractor  = "EXTRACT(jsonPayload.${each.value.field})"
  label_extractors = { model_version = "EXTRACT(jsonPayload.model_version)" }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "1"
    display_name = each.key

    labels {
      key         = "model_version"
      value_type  = "STRING"
      description = "The evaluated version."
    }
  }

  # Twenty buckets of 0.05 over [0, 1]: an accuracy's median per minute reads to the nearest bucket.
  bucket_options {
    linear_buckets {
      num_finite_buckets = 20
      width              = 0.05
      offset             = 0
    }
  }

  depends_on = [google_project_service.main]
}

# Where incidents go: an email when alert_email is set; without it, incidents open in the console only.
resource "google_monitoring_notification_channel" "email" {
  count = var.alert_email == "" ? 0 : 1

  display_name = "sentiment alerts"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }

  depends_on = [google_project_service.main]
}

locals {
  notification_channels = google_monitoring_notification_channel.email[*].name
  alert_runbook         = "What it watches, why, and what to do: docs/alerts.md in the repository."
}

resource "google_monitoring_alert_policy" "log_event" {
  for_each = local.log_alerts

  display_name          = "sentiment: ${each.value.title}"
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = local.notification_channels

  conditions {
    display_name = "${each.key}: more than ${each.value.above} in ${each.value.window}"
    condition_threshold {
      # The reference to the metric orders the policy after it: a policy on a metric not yet created is refused.
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.main[each.value.metric].name}\" AND resource.type=\"${each.value.resource}\""
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.above
      duration        = "0s"
      aggregations {
        alignment_period     = each.value.window
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = each.value.group_by
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = "${local.log_metrics[each.value.metric].description} ${local.alert_runbook}"
    mime_type = "text/markdown"
  }
}

# predict and feedback: more than var.alert_error_ratio of a function's answers are 5xx over five minutes, and at
# least five of them (one failure among two requests is not an outage). Cloud Run's own count, which sees the
# 5xx the code never logs: a crash, a timeout, no instance available.
resource "google_monitoring_alert_policy" "server_errors" {
  display_name          = "sentiment: predict or feedback answers 5xx"
  combiner              = "AND"
  severity              = "ERROR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "5xx share of a function's requests above ${var.alert_error_ratio}"
    condition_threshold {
      filter             = "metric.type=\"run.googleapis.com/request_count\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=monitoring.regex.full_match(\"predict|feedback\") AND metric.labels.response_code_class=\"5xx\""
      denominator_filter = "metric.type=\"run.googleapis.com/request_count\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=monitoring.regex.full_match(\"predict|feedback\")"
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_error_ratio
      duration           = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  conditions {
    display_name = "at least 5 answers 5xx in five minutes"
    condition_threshold {
      filter          = "metric.type=\"run.googleapis.com/request_count\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=monitoring.regex.full_match(\"predict|feedback\") AND metric.labels.response_code_class=\"5xx\""
      comparison      = "COMPARISON_GT"
      threshold_value = 4
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = "Cloud Run counts the 5xx answers of predict and feedback (the log-based sentiment_server_errors shows which route and status). ${local.alert_runbook}"
    mime_type = "text/markdown"
  }
}

# predict's 95th percentile latency over five minutes, all revisions together, for ten minutes.
resource "google_monitoring_alert_policy" "predict_latency" {
  display_name          = "sentiment: predict p95 latency above ${var.alert_latency_p95_ms} ms"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.notification_channels

  conditions {
    display_name = "predict p95 latency above ${var.alert_latency_p95_ms} ms"
    condition_threshold {
      filter          = "metric.type=\"run.googleapis.com/request_latencies\" AND resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"predict\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_latency_p95_ms
      duration        = "600s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_95"
        group_by_fields      = ["resource.label.service_name"]
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = "Cloud Run's request latencies of predict, cold starts included. ${local.alert_runbook}"
    mime_type = "text/markdown"
  }
}

# An event in the dead-letter topic's holding subscription (pubsub.tf): the redeploy gave up on it. The incident
# stays open until someone reads and acknowledges the messages.
resource "google_monitoring_alert_policy" "dead_letter" {
  display_name          = "sentiment: events in the dead-letter topic"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "undelivered messages in ${google_pubsub_subscription.dead_letter_hold.name}"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letter_hold.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The redeploy could not process an event (lines deploy_failed and event_unprocessable say why); it waits in ${google_pubsub_subscription.dead_letter_hold.name}. ${local.alert_runbook}"
    mime_type = "text/markdown"
  }
}

# MLflow's /health from Google's checkers every minute. Cloud Run IAM admits the check with an identity token of
# Monitoring's service agent (granted below); /health needs no MLflow credentials.
resource "google_project_service_identity" "monitoring" {
  provider = google-beta

  project = var.project_id
  service = "monitoring.googleapis.com"

  depends_on = [google_project_service.main]
}

locals {
  monitoring_agent = "serviceAccount:service-${data.google_project.main.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
}

resource "google_cloud_run_v2_service_iam_member" "mlflow_uptime_check" {
  location = var.region
  name     = google_cloud_run_v2_service.mlflow.name
  role     = "roles/run.invoker"
  member   = local.monitoring_agent

  depends_on = [google_project_service_identity.monitoring]
}

resource "google_monitoring_uptime_check_config" "mlflow" {
  display_name = "sentiment: MLflow /health"
  timeout      = "10s"
  period       = "60s"
  checker_type = "STATIC_IP_CHECKERS"

  http_check {
    path           = "/health"
    port           = 443
    use_ssl        = true
    validate_ssl   = true
    request_method = "GET"
    service_agent_authentication {
      type = "OIDC_TOKEN"
    }
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = trimprefix(google_cloud_run_v2_service.mlflow.uri, "https://")
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.mlflow_uptime_check]
}

# Down from more than one checker location for five minutes: one location's network trouble is not MLflow down.
resource "google_monitoring_alert_policy" "mlflow_down" {
  display_name          = "sentiment: MLflow is down"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "MLflow /health fails from more than one location"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type=\"uptime_url\" AND metric.labels.check_id=\"${google_monitoring_uptime_check_config.mlflow.uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "300s"
      aggregations {
        alignment_period     = "120s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.host"]
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    content   = "MLflow's /health does not answer 200 through Cloud Run (the watcher's ticks then fail too). ${local.alert_runbook}"
    mime_type = "text/markdown"
  }
}

# The serving dashboard: its tiles are docs/alerts.md's "Dashboard".
resource "google_monitoring_dashboard" "serving" {
  dashboard_json = templatefile("${path.module}/dashboards/serving.json", {
    dead_letter_subscription = google_pubsub_subscription.dead_letter_hold.name
    uptime_check_id          = google_monitoring_uptime_check_config.mlflow.uptime_check_id
    latency_p95_ms           = var.alert_latency_p95_ms
  })

  # Its charts read the log-based metrics: created first, so the dashboard never shows a missing metric.
  depends_on = [google_logging_metric.main]
}
