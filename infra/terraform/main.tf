resource "google_project_service" "main" {
  for_each = local.services

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

resource "google_service_account" "main" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "sentiment-${each.key}"
  display_name = each.value

  depends_on = [google_project_service.main]
}

data "google_project" "main" {
  project_id = var.project_id
}

# Pub/Sub's service agent signs the push subscription's tokens and moves dead letters: created (not merely
# assumed) before the grants that name it, which fail on a fresh project where it does not exist yet.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.main]
}

locals {
  pubsub_agent = "serviceAccount:${google_project_service_identity.pubsub.email}"
  # Cloud Run's service agent pulls the functions' images (created when the Run API is enabled).
  run_agent = "serviceAccount:service-${data.google_project.main.number}@serverless-robot-prod.iam.gserviceaccount.com"
}
