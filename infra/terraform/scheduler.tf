resource "google_cloud_scheduler_job" "tick" {
  name             = "registry-watcher-tick"
  description      = "One reconcile of the registry watcher: catches up with any promotion a webhook missed."
  schedule         = var.scheduler_cron
  time_zone        = "Etc/UTC"
  attempt_deadline = "120s"
  region           = var.region

  retry_config {
    retry_count = 0 # the next tick is the retry
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.main["registry-watcher"].service_config[0].uri
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }
    oidc_token {
      service_account_email = google_service_account.main["scheduler"].email
      audience              = google_cloudfunctions2_function.main["registry-watcher"].service_config[0].uri
    }
  }

  depends_on = [google_project_service.main]
}

# The retrain check (functions/retrain): one reconcile per tick; a training run it starts outlives the tick.
resource "google_cloud_scheduler_job" "retrain" {
  name             = "retrain-check-tick"
  description      = "One retrain check: exports new feedback, and starts the training job when the data or settings changed."
  schedule         = var.retrain_cron
  time_zone        = "Etc/UTC"
  attempt_deadline = "300s"
  region           = var.region

  retry_config {
    retry_count = 0 # the next tick is the retry; a failed run is retried by the check's own backoff
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.main["retrain"].service_config[0].uri
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }
    oidc_token {
      service_account_email = google_service_account.main["scheduler"].email
      audience              = google_cloudfunctions2_function.main["retrain"].service_config[0].uri
    }
  }

  depends_on = [google_project_service.main]
}
