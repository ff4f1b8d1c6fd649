# Roles on the specific resources each component uses; no project-wide basic role anywhere.
# Firestore has no per-database IAM binding: datastore.user is granted with a condition naming the database.

locals {
  firestore_users = toset(["predict", "feedback", "registry-watcher", "registry-webhook", "redeployer"])
  watchers        = toset(["registry-watcher", "registry-webhook"])

  secret_readers = merge(
    { for sa in ["predict", "feedback"] : "${sa}/feedback-token" => { sa = sa, secret_name = "feedback-token" } },
    {
      for pair in setproduct(["registry-watcher", "registry-webhook"], ["mlflow-webhook", "mlflow-watcher-password"]) :
      "${pair[0]}/${pair[1]}" => { sa = pair[0], secret_name = pair[1] }
    },
    {
      for secret in ["mlflow-db-password", "mlflow-webhook-encryption-key", "mlflow-auth-config"] :
      "mlflow/${secret}" => { sa = "mlflow", secret_name = secret }
    },
  )
}

resource "google_project_iam_member" "firestore_user" {
  for_each = local.firestore_users

  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.main[each.value].email}"

  condition {
    title      = "sentiment-firestore-only"
    expression = "resource.name.startsWith(\"projects/${var.project_id}/databases/${google_firestore_database.main.name}\")"
  }
}

resource "google_secret_manager_secret_iam_member" "reader" {
  for_each = local.secret_readers

  secret_id = google_secret_manager_secret.main[each.value.secret_name].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.main[each.value.sa].email}"
}

# predict reads staged versions; the watchers stage them (create, never overwrite: no delete).
resource "google_storage_bucket_iam_member" "staged_reader" {
  for_each = toset(["predict", "registry-watcher", "registry-webhook"])

  bucket = google_storage_bucket.staged_models.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.main[each.value].email}"
}

resource "google_storage_bucket_iam_member" "staged_writer" {
  for_each = local.watchers

  bucket = google_storage_bucket.staged_models.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.main[each.value].email}"
}

resource "google_storage_bucket_iam_member" "mlflow_artifacts" {
  bucket = google_storage_bucket.mlflow_artifacts.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.main["mlflow"].email}"
}

resource "google_pubsub_topic_iam_member" "watcher_publisher" {
  for_each = local.watchers

  topic  = google_pubsub_topic.production_changed.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.main[each.value].email}"
}

# The redeploy (and only it: the watchers hold no Cloud Run role) updates predict's Cloud Run service through
# the Admin API (get, update, wait on the operation); the revisions it creates run as predict's service account,
# which Cloud Run lets only a principal with actAs on that account attach.
resource "google_cloud_run_v2_service_iam_member" "redeployer" {
  location = var.region
  name     = google_cloudfunctions2_function.main["predict"].service_config[0].service
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.main["redeployer"].email}"
}

resource "google_service_account_iam_member" "redeployer_acts_as_predict" {
  service_account_id = google_service_account.main["predict"].name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.main["redeployer"].email}"
}

# Pub/Sub's agent signs the push subscription's OIDC tokens as pubsub-push.
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.main["pubsub-push"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:service-${data.google_project.main.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
