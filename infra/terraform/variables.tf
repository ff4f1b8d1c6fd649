variable "project_id" {
  type        = string
  description = "Google Cloud project that holds everything."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid project id (6-30 lowercase letters, digits and hyphens)."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions, Cloud Run, Cloud SQL, Scheduler and buckets."
  default     = "europe-west1"
}

variable "firestore_location" {
  type        = string
  description = "Location of the Firestore database (a region or a multi-region such as eur3)."
  default     = "eur3"
}

variable "name_prefix" {
  type        = string
  description = "Prefix of bucket names, which are global: usually the project id."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{2,40}$", var.name_prefix))
    error_message = "name_prefix must be 3-41 lowercase letters, digits or hyphens."
  }
}

variable "bundle_dir" {
  type        = string
  description = "Folder of the built function bundles (`make bundles` writes build/functions/<name>)."
  default     = "../../build/functions"
}

variable "python_runtime" {
  type        = string
  description = "Cloud Functions runtime of every function."
  default     = "python312"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.python_runtime)
    error_message = "python_runtime must be python311, python312 or python313."
  }
}

variable "initial_model_uri" {
  type        = string
  description = "MODEL_URI of predict's first deployment (a staged folder, gs://...). The redeploy changes it afterwards; Terraform ignores that change."
}

variable "model_name" {
  type        = string
  description = "Registered model the watcher follows (and whose deployment feedback reports)."
  default     = "yelp-sentiment"
}

variable "min_validation_accuracy" {
  type        = number
  description = "Deploy gate: the lowest validation accuracy a version may have."
  default     = 0.85

  validation {
    condition     = var.min_validation_accuracy >= 0 && var.min_validation_accuracy <= 1
    error_message = "min_validation_accuracy must be between 0 and 1."
  }
}

variable "max_instances" {
  type        = map(number)
  description = "max_instance_count per function."
  default = {
    predict               = 20
    feedback              = 10
    registry_watcher      = 2
    registry_webhook      = 2
    on_production_changed = 1
  }

  validation {
    condition     = alltrue([for v in values(var.max_instances) : v >= 1 && v <= 100])
    error_message = "every max_instance_count must be between 1 and 100."
  }
}

variable "allowed_origins" {
  type        = list(string)
  description = "Extra origins allowed by CORS besides the static site's own URL."
  default     = []
}

variable "mlflow_image" {
  type        = string
  description = "Container image of the MLflow server built from infra/mlflow/Dockerfile (mlflow[auth] 3.17.2, psycopg, GCS), tagged with the release."

  validation {
    condition     = can(regex(":v?[0-9]+\\.[0-9]+\\.[0-9]+$", var.mlflow_image))
    error_message = "mlflow_image must be pinned to a release tag, never latest."
  }
}

variable "mlflow_invokers" {
  type        = list(string)
  description = "Principals allowed to reach the MLflow server (for example group:ml-team@example.com); the watcher is added."
  default     = []
}

variable "sql_tier" {
  type        = string
  description = "Cloud SQL machine tier of MLflow's PostgreSQL backend."
  default     = "db-g1-small"
}

variable "scheduler_cron" {
  type        = string
  description = "How often Cloud Scheduler ticks the registry watcher."
  default     = "* * * * *"
}
