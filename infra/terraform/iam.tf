# Roles on the specific resources each component uses; no project-wide basic role anywhere.
# Firestore has no per-database IAM binding: every datastore role is granted on the project with a condition on
# resource.name naming one database (the database itself, or anything under it), never unconditioned.

locals {
  # The main database: predictions, counters, references, webhook deliveries. The redeploy needs none of it.
  firestore_users = toset(["predict", "feedback", "feedback-operator", "registry-watcher", "registry-webhook"])
  # The deployments database: what gets deployed. Written only by the watchers and the redeploy; the public
  # functions cannot write it, and only feedback (both deployments) reads it: GET /statistics shows the
  # serving version.
  # The retrain check keeps its state document (retraining/{model}) there too.
  deployments_writers = toset(["registry-watcher", "registry-webhook", "redeployer", "retrain"])
  deployments_readers = toset(["feedback", "feedback-operator"])
  watchers            = toset(["registry-watcher", "registry-webhook"])

  database_path = {
    main        = "projects/${var.project_id}/databases/${google_firestore_database.main.name}"
    deployments = "projects/${var.project_id}/databases/${google_firestore_database.deployments.name}"
  }
  # Exact, or under it with a slash: "(default)" must not also match a database named "(default)-x".
  database_condition = {
    for name, path in local.database_path : name => "resource.name == \"${path}\" || resource.name.startsWith(\"${path}/\")"
  }

  secret_readers = merge(
    { for sa in ["predict", "feedback", "feedback-operator"] : "${sa}/feedback-token" => { sa = sa, secret_name = "feedback-token" } },
    {
      for pair in setproduct(["registry-watcher", "registry-webhook"], ["mlflow-webhook", "mlflow-watcher-password"]) :
      "${pair[0]}/${pair[1]}" => { sa = pair[0], secret_name = pair[1] }
    },
    # The retrain check reads runs as MLflow's watcher (READ on the experiment); the job writes them as trainer.
    { "retrain/mlflow-watcher-password" = { sa = "retrain", secret_name = "mlflow-watcher-password" } },
    { "train/mlflow-trainer-password" = { sa = "train", secret_name = "mlflow-trainer-password" } },
    {
      for secret in ["mlflow-db-password", "mlflow-webhook-encryption-key", "mlflow-auth-config", "mlflow-flask-secret-key"] :
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
    title      = "sentiment-main-database-only"
    expression = local.database_condition["main"]
  }
}

resource "google_project_iam_member" "deployments_user" {
  for_each = local.deployments_writers

  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.main[each.value].email}"

  condition {
    title      = "sentiment-deployments-database-only"
    expression = local.database_condition["deployments"]
  }
}

# The retrain check reads answered predictions (the feedback export) and writes nothing in the main database.
resource "google_project_iam_member" "firestore_viewer" {
  for_each = toset(["retrain"])

  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.main[each.value].email}"

  condition {
    title      = "sentiment-main-database-read-only"
    expression = local.database_condition["main"]
  }
}

resource "google_project_iam_member" "deployments_viewer" {
  for_each = local.deployments_readers

  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.main[each.value].email}"

  condition {
    title      = "sentiment-deployments-database-read-only"
    expression = local.database_condition["deployments"]
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

# The watchers read the evaluation set (evaluation.py); nothing is granted write on it.
resource "google_storage_bucket_iam_member" "eval_set_reader" {
  for_each = local.watchers

  bucket = google_storage_bucket.eval_sets.name
  role   = "roles/storage.objectViewer"
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
  member             = local.pubsub_agent
}

# The redeploy waits on each update's long-running operation (operations.get). Operations are resources of the
# project, not of the service, so run.developer on predict's service does not cover them; this role holds that
# one permission.
resource "google_project_iam_custom_role" "run_operation_reader" {
  role_id     = "sentimentRunOperationReader"
  title       = "Cloud Run operation reader"
  description = "Reads Cloud Run long-running operations: the redeploy waits on its own updates of predict."
  permissions = ["run.operations.get"]
}

resource "google_project_iam_member" "redeployer_operations" {
  project = var.project_id
  role    = google_project_iam_custom_role.run_operation_reader.id
  member  = "serviceAccount:${google_service_account.main["redeployer"].email}"
}

# Cloud Run pulls the image of every revision, those the redeploy creates included, as its service agent.
resource "google_artifact_registry_repository_iam_member" "run_agent_reader" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.reader"
  member     = local.run_agent

  depends_on = [google_project_service.main]
}

# The build account (build_config.service_account): reads the bundle, pushes the image, writes the build's log.
resource "google_storage_bucket_iam_member" "build_source_reader" {
  bucket = google_storage_bucket.function_sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.main["build"].email}"
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.main["build"].email}"
}

# Logs have no narrower resource to grant on than the project.
resource "google_project_iam_member" "build_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.main["build"].email}"
}

# Continuous training (training.tf). Both read the training data: the job to train on it, the check to fingerprint
# it. Only the check writes, and only new objects under feedback/ (no overwrite, no delete: old generations stay).
resource "google_storage_bucket_iam_member" "training_data_reader" {
  for_each = toset(["train", "retrain"])

  bucket = google_storage_bucket.training_data.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.main[each.value].email}"
}

resource "google_storage_bucket_iam_member" "feedback_writer" {
  bucket = google_storage_bucket.training_data.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.main["retrain"].email}"

  condition {
    title      = "sentiment-feedback-folder-only"
    expression = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.training_data.name}/objects/${var.model_name}/feedback/\")"
  }
}

# The check starts the job with per-run overrides (RETRAIN_EXECUTION, AUTO_PROMOTE) and reads its executions:
# Cloud Run documents run.developer on the job for overrides; granted on this job only.
resource "google_cloud_run_v2_job_iam_member" "retrain_runs_train" {
  location = google_cloud_run_v2_job.train.location
  name     = google_cloud_run_v2_job.train.name
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.main["retrain"].email}"
}

# An execution with overrides runs as train: as the redeploy with predict's account, the check needs actAs on it.
resource "google_service_account_iam_member" "retrain_acts_as_train" {
  service_account_id = google_service_account.main["train"].name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.main["retrain"].email}"
}
