resource "google_pubsub_topic" "production_changed" {
  #checkov:skip=CKV_GCP_83:events carry version ids and URIs, no review text: Google-managed encryption suffices
  name                       = local.topic
  message_retention_duration = "604800s"

  depends_on = [google_project_service.main]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:events carry version ids and URIs, no review text: Google-managed encryption suffices
  name                       = "${local.topic}-dead-letter"
  message_retention_duration = "604800s"

  depends_on = [google_project_service.main]
}

# Dead-lettered events wait here to be read (a topic without a subscription would drop them).
resource "google_pubsub_subscription" "dead_letter_hold" {
  name                       = "${local.topic}-dead-letter-hold"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "redeploy" {
  name                 = "${local.topic}-redeploy"
  topic                = google_pubsub_topic.production_changed.id
  ack_deadline_seconds = 600

  push_config {
    push_endpoint = google_cloudfunctions2_function.main["on-production-changed"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.main["pubsub-push"].email
      audience              = google_cloudfunctions2_function.main["on-production-changed"].service_config[0].uri
    }
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = 5
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "300s"
  }

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's own agent moves messages to the dead-letter topic and acknowledges them on the source.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  subscription = google_pubsub_subscription.redeploy.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
