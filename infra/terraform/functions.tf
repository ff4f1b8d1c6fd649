# Each bundle (the function's folder plus the shared package, built by `make bundles`) is zipped and stored
# under a name holding its hash, so a change of code is a new object and a new deployment.
data "archive_file" "bundle" {
  for_each = toset([for f in local.functions : f.source])

  type        = "zip"
  source_dir  = "${var.bundle_dir}/${each.value}"
  output_path = "${path.module}/.terraform/bundles/${each.value}.zip"
}

resource "google_storage_bucket_object" "bundle" {
  for_each = data.archive_file.bundle

  bucket = google_storage_bucket.function_sources.name
  name   = "${each.key}-${each.value.output_sha256}.zip"
  source = each.value.output_path
}

# The functions' images: built by Cloud Build as the build account, pulled by Cloud Run (iam.tf grants both).
# Created here rather than left to Cloud Functions (gcf-artifacts), so that its grants are Terraform's too.
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:images of public source code: Google-managed encryption suffices
  location      = var.region
  repository_id = "sentiment-functions"
  format        = "DOCKER"
  description   = "Images of the sentiment functions, built from their bundles"

  depends_on = [google_project_service.main]
}

resource "google_cloudfunctions2_function" "main" {
  #checkov:skip=CKV_GCP_124:only registry-watcher and feedback-operator keep ingress all (operators call them with an identity token; Cloud Run IAM admits no one else); CKV2_SENTIMENT_17 keeps every allUsers function behind the load balancer or internal
  for_each = local.functions

  name     = each.key
  location = var.region

  build_config {
    runtime           = var.python_runtime
    entry_point       = each.value.entry_point
    docker_repository = google_artifact_registry_repository.functions.id
    service_account   = google_service_account.main["build"].id
    source {
      storage_source {
        bucket = google_storage_bucket.function_sources.name
        object = google_storage_bucket_object.bundle[each.value.source].name
      }
    }
  }

  service_config {
    max_instance_count             = local.max_instances[each.key]
    min_instance_count             = 0
    available_memory               = each.value.memory
    timeout_seconds                = each.value.timeout
    ingress_settings               = each.value.ingress
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.main[each.value.service_account].email
    # Cloud Functions adds LOG_EXECUTION_ID=true to every function; set here, an apply sees no change to undo.
    environment_variables = merge(local.function_env[each.key], { LOG_EXECUTION_ID = "true" })

    dynamic "secret_environment_variables" {
      for_each = local.function_secrets[each.key]
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  lifecycle {
    # The redeploy (on_production_changed) moves predict's MODEL_URI to each promoted version through the
    # Cloud Run Admin API, with the MODEL_SHA256 its file must have; Terraform leaves both alone rather than
    # rolling the model back or dropping the check.
    ignore_changes = [
      service_config[0].environment_variables["MODEL_URI"],
      service_config[0].environment_variables["MODEL_SHA256"],
    ]
  }

  # A revision reads its secrets as its service account when it starts, and the build needs its roles: both
  # granted before the first build, or the first apply fails on a fresh project.
  depends_on = [
    google_project_service.main,
    google_secret_manager_secret_version.main,
    google_secret_manager_secret_iam_member.reader,
    google_project_iam_member.build_log_writer,
    google_artifact_registry_repository_iam_member.build_writer,
    google_storage_bucket_iam_member.build_source_reader,
  ]
}

# Invokers: allUsers only on predict, feedback and the signed webhook receiver (docs/architecture.md; below); the
# others are invoked by the Scheduler's and Pub/Sub's service accounts, and the watcher also by its operators.
locals {
  invokers = merge(
    {
      "registry-watcher/scheduler" = {
        function = "registry-watcher"
        member   = "serviceAccount:${google_service_account.main["scheduler"].email}"
      }
      "retrain/scheduler" = {
        function = "retrain"
        member   = "serviceAccount:${google_service_account.main["scheduler"].email}"
      }
      "on-production-changed/pubsub-push" = {
        function = "on-production-changed"
        member   = "serviceAccount:${google_service_account.main["pubsub-push"].email}"
      }
    },
    # Operators: GET /status and POST /rollout with an identity token (ingress all, IAM required).
    { for member in var.watcher_invokers : "registry-watcher/${member}" => { function = "registry-watcher", member = member } },
    # The same operators list predictions (review texts) on feedback-operator, with an identity token.
    { for member in var.watcher_invokers : "feedback-operator/${member}" => { function = "feedback-operator", member = member } },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.invokers

  location = var.region
  name     = google_cloudfunctions2_function.main[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The load balancer does not sign its requests: predict and feedback stay allUsers-invokable, their ingress admits
# the load balancer only. A resource of its own over a literal set, so that checkov resolves every binding.
resource "google_cloud_run_v2_service_iam_member" "public" {
  #checkov:skip=CKV_GCP_102:predict, feedback (behind the load balancer) and the HMAC-checked webhook receiver are public by design (docs/architecture.md)
  for_each = local.public_functions

  location = var.region
  name     = google_cloudfunctions2_function.main[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# Deployments made before the load balancer held these bindings in `invoker`: moved, not re-created (no moment
# without them).
moved {
  from = google_cloud_run_v2_service_iam_member.invoker["predict/allUsers"]
  to   = google_cloud_run_v2_service_iam_member.public["predict"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.invoker["feedback/allUsers"]
  to   = google_cloud_run_v2_service_iam_member.public["feedback"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.invoker["registry-webhook/allUsers"]
  to   = google_cloud_run_v2_service_iam_member.public["registry-webhook"]
}
