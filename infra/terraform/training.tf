# Continuous training (issue #16): the training image run as the Cloud Run job `train`, started by the retrain
# check (functions/retrain, functions.tf) with per-run overrides, or by hand (`gcloud run jobs execute train`).
# Its account `train` reads the data bucket and writes MLflow as MLflow's `trainer` user, nothing else (iam.tf).

locals {
  data_uri = "gs://${google_storage_bucket.training_data.name}/${var.model_name}/"
  # What the retrain check starts and how it names it (TRAINING_JOB, the Cloud Run Admin API's job name).
  training_job = "projects/${var.project_id}/locations/${var.region}/jobs/train"

  # The job's variables (training.job); the retrain check passes RETRAIN_EXECUTION, and AUTO_PROMOTE again, as
  # container overrides. RETRAIN_ARGS and TRAINING_IMAGE come from one variable each, on the job and on the check
  # alike, so that the check's fingerprint and the run's agree.
  training_env = {
    DATA_URI                 = local.data_uri
    RETRAIN_ARGS             = var.retrain_args
    TRAINING_IMAGE           = var.training_image
    AUTO_PROMOTE             = var.auto_promote
    MLFLOW_TRACKING_URI      = google_cloud_run_v2_service.mlflow.uri
    MLFLOW_TRACKING_USERNAME = "trainer"
    MLFLOW_IAM_AUDIENCE      = google_cloud_run_v2_service.mlflow.uri
    GOOGLE_CLOUD_PROJECT     = var.project_id
  }
  training_secrets = {
    MLFLOW_TRACKING_PASSWORD = google_secret_manager_secret.main["mlflow-trainer-password"].secret_id
  }
}

resource "google_cloud_run_v2_job" "train" {
  name                = "train"
  location            = var.region
  deletion_protection = false # stateless: its runs live in MLflow, its data in the bucket

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.main["train"].email
      timeout         = "${var.training_timeout_s}s"
      max_retries     = 0 # the retrain check retries a failed run, with backoff (RETRAIN_BACKOFF_S)

      containers {
        # By digest (variables.tf): the run logs the image it ran as TRAINING_IMAGE, and a tag cannot move under it.
        image = var.training_image

        # Sized from the default run on today's data: peak RSS 1.26 GiB, 265 s of CPU time (/usr/bin/time -v on a
        # 2-core machine; infra/terraform/README.md "Continuous training"). 4 GiB leaves room for the data to
        # triple and for the champion scored beside the challenger.
        resources {
          limits = {
            cpu    = var.training_cpu
            memory = var.training_memory
          }
        }

        dynamic "env" {
          for_each = local.training_env
          content {
            name  = env.key
            value = env.value
          }
        }
        # Secrets come from Secret Manager through the environment, never from this file.
        dynamic "env" {
          for_each = local.training_secrets
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }
      }
    }
  }

  # An execution reads its secret as train when it starts.
  depends_on = [
    google_project_service.main,
    google_secret_manager_secret_version.main,
    google_secret_manager_secret_iam_member.reader,
  ]
}
