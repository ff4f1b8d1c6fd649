resource "google_firestore_database" "main" {
  project                           = var.project_id
  name                              = "(default)"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # DELETE, not ABANDON: an abandoned "(default)" database makes the next apply on the project fail with 409.
  # Delete protection (var.deletion_protection) still refuses a destroy until it is turned off by an apply.
  deletion_policy = "DELETE"

  depends_on = [google_project_service.main]
}

# The deployment documents (desired, target, serving, rollout, outbox, claims and their history) live in a database
# of their own: Firestore IAM is granted on the project, and a condition naming this database keeps them out of
# the public functions' reach (iam.tf). Only the watcher and the redeploy write it; feedback may read it.
resource "google_firestore_database" "deployments" {
  project                           = var.project_id
  name                              = "deployments"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = "DELETE" # as the main one: destroyed with the project, unless protected

  depends_on = [google_project_service.main]
}

# Review texts are large and never queried: not indexed (saves write cost and the 1,500-byte index limit).
resource "google_firestore_field" "prediction_text" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "predictions"
  field      = "text"

  index_config {}
}

# Webhook delivery ids are kept a day for replay protection, then deleted by Firestore's TTL.
resource "google_firestore_field" "delivery_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "webhook_deliveries"
  field      = "expires_at"

  ttl_config {}
}

# Retention: each prediction (a review, personal data) has expire_at = created_at + var.prediction_retention_days,
# written by predict; Firestore's TTL policy deletes it after that time (typically within a day). Counters keep
# their totals (docs/architecture.md). Not indexed: never queried, and a rising timestamp would be a hot index.
resource "google_firestore_field" "prediction_expiry" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "predictions"
  field      = "expire_at"

  index_config {}
  ttl_config {}
}

# Statistics per version: counts of a version's predictions with feedback (aggregation check queries).
resource "google_firestore_index" "predictions_by_version" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "predictions"

  fields {
    field_path = "model_version"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }
}

# The retrain check's feedback export (functions/retrain/feedback_export.py): answers that count as evidence,
# oldest first (where counted_as_evidence == true and feedback_at > watermark, order by feedback_at). The index
# has exactly the query's fields: Firestore serves a query only from an index of its own fields.
resource "google_firestore_index" "predictions_with_feedback" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = "predictions"

  fields {
    field_path = "counted_as_evidence"
    order      = "ASCENDING"
  }
  fields {
    field_path = "feedback_at"
    order      = "ASCENDING"
  }
}
