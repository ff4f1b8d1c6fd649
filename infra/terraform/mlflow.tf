# MLflow tracking server: Cloud Run, PostgreSQL on Cloud SQL over a private connection, artifacts in GCS,
# basic auth on with a generated admin password, only IAM-granted principals may reach it.

resource "google_compute_network" "main" {
  name                    = "sentiment"
  auto_create_subnetworks = false

  depends_on = [google_project_service.main]
}

# Nothing reaches the VPC from outside: Cloud Run only sends from it, Cloud SQL is reached over the peering.
resource "google_compute_firewall" "deny_ingress" {
  name      = "sentiment-deny-ingress"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_subnetwork" "run" {
  name                     = "sentiment-run"
  region                   = var.region
  network                  = google_compute_network.main.id
  ip_cidr_range            = "10.8.0.0/24"
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_global_address" "sql_peering" {
  name          = "sentiment-sql-peering"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 20
  network       = google_compute_network.main.id
}

# A destroy cannot delete the connection while Cloud SQL still holds producer resources in it (for days after the
# instance is gone): it is abandoned. Its VPC peering would then block deleting the network, so `make destroy`
# deletes the peering from the VPC's side first (infra/deploy.py, step sql-peering). A later apply on a network
# where the connection still exists updates its ranges instead of failing to create it.
resource "google_service_networking_connection" "sql" {
  network                 = google_compute_network.main.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.sql_peering.name]
  deletion_policy         = "ABANDON"
  update_on_creation_fail = true
}

# Cloud SQL keeps a deleted instance's name for about a week: a new name on every create, so that a destroy
# then apply does not fail on "sentiment-mlflow" still being taken.
resource "random_id" "sql_instance" {
  byte_length = 3
}

resource "google_sql_database_instance" "mlflow" {
  #checkov:skip=CKV_GCP_6:ssl_mode ENCRYPTED_ONLY refuses unencrypted connections; MLflow connects with TLS, not client certificates
  name                = "sentiment-mlflow-${random_id.sql_instance.hex}"
  region              = var.region
  database_version    = "POSTGRES_18"
  deletion_protection = var.deletion_protection

  settings {
    # Left unset, POSTGRES_16 and later get ENTERPRISE_PLUS, which refuses the shared-core tiers (db-g1-small).
    edition           = "ENTERPRISE"
    tier              = var.sql_tier
    availability_type = "ZONAL"

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.main.id
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
    }

    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
  }

  depends_on = [google_service_networking_connection.sql]
}

# Both abandoned on destroy, which deletes the instance and them with it: dropped one by one, in parallel, the
# user fails while it owns the databases' tables ("role cannot be dropped because some objects depend on it").
resource "google_sql_database" "mlflow" {
  for_each = toset(["mlflow", "mlflow_auth"])

  name            = each.value
  instance        = google_sql_database_instance.mlflow.name
  deletion_policy = "ABANDON"
}

resource "google_sql_user" "mlflow" {
  name            = "mlflow"
  instance        = google_sql_database_instance.mlflow.name
  password        = random_password.main["mlflow-db-password"].result
  deletion_policy = "ABANDON"
}

resource "google_cloud_run_v2_service" "mlflow" {
  name                = "mlflow"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL" # reachable only with an IAM identity granted run.invoker below
  deletion_protection = var.deletion_protection

  template {
    service_account = google_service_account.main["mlflow"].email

    # One instance stays warm: MLflow takes about 7 s from process start to /health (11 s with two workers,
    # measured locally), and the watcher gives MLflow 2 s (MLFLOW_TIMEOUT_S).
    scaling {
      min_instance_count = 1
      max_instance_count = 2
    }

    # Direct VPC egress: Cloud SQL's private address, and the webhook receiver's internal-only ingress.
    vpc_access {
      egress = "ALL_TRAFFIC"
      network_interfaces {
        network    = google_compute_network.main.id
        subnetwork = google_compute_subnetwork.run.id
      }
    }

    containers {
      # The image's entry point, infra/mlflow/serve.py, starts MLflow from the variables below.
      image = var.mlflow_image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "2Gi"
        }
      }

      env {
        name  = "MLFLOW_BACKEND_STORE_URI"
        value = "postgresql+psycopg://mlflow@${google_sql_database_instance.mlflow.private_ip_address}/mlflow"
      }
      # Secrets come from Secret Manager through the environment, never from this file.
      env {
        name = "MLFLOW_BACKEND_STORE_PASSWORD"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.main["mlflow-db-password"].secret_id
            version = "latest"
          }
        }
      }
      env {
        name  = "MLFLOW_ARTIFACTS_DESTINATION"
        value = "gs://${google_storage_bucket.mlflow_artifacts.name}"
      }
      # The basic-auth app's CSRF key: without it MLflow exits at start-up; one key for every worker and instance.
      env {
        name = "MLFLOW_FLASK_SERVER_SECRET_KEY"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.main["mlflow-flask-secret-key"].secret_id
            version = "latest"
          }
        }
      }
      # MLflow answers 403 to any other Host; the service's URL (mlflow-HASH-REGION.a.run.app or
      # mlflow-PROJECT_NUMBER.REGION.run.app) is not known before the service exists.
      env {
        name  = "MLFLOW_SERVER_ALLOWED_HOSTS"
        value = "mlflow-*.run.app"
      }
      env {
        name  = "MLFLOW_WORKERS"
        value = "2"
      }
      env {
        name = "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.main["mlflow-webhook-encryption-key"].secret_id
            version = "latest"
          }
        }
      }
      env {
        name  = "MLFLOW_AUTH_CONFIG_PATH"
        value = "/secrets/auth/basic_auth.ini"
      }
      env {
        name  = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
        value = "false"
      }

      volume_mounts {
        name       = "auth"
        mount_path = "/secrets/auth"
      }
    }

    volumes {
      name = "auth"
      secret {
        secret = google_secret_manager_secret.main["mlflow-auth-config"].secret_id
        items {
          version = "latest"
          path    = "basic_auth.ini"
        }
      }
    }
  }

  # Its revision reads the secrets as its account at start and opens both databases as their user.
  depends_on = [
    google_project_service.main,
    google_secret_manager_secret_version.main,
    google_secret_manager_secret_iam_member.reader,
    google_sql_database.mlflow,
    google_sql_user.mlflow,
  ]
}

# The retrain check reads the last run's fingerprint; the training job logs runs and registers versions.
resource "google_cloud_run_v2_service_iam_member" "mlflow_invoker" {
  for_each = toset(concat(var.mlflow_invokers, [
    "serviceAccount:${google_service_account.main["registry-watcher"].email}",
    "serviceAccount:${google_service_account.main["registry-webhook"].email}",
    "serviceAccount:${google_service_account.main["retrain"].email}",
    "serviceAccount:${google_service_account.main["train"].email}",
  ]))

  location = var.region
  name     = google_cloud_run_v2_service.mlflow.name
  role     = "roles/run.invoker"
  member   = each.value
}
