# Every secret is generated here and kept in Secret Manager; none is written in any file of the repository.
resource "random_password" "main" {
  for_each = toset([
    "feedback-token", "mlflow-webhook", "mlflow-watcher-password", "mlflow-admin-password", "mlflow-db-password",
    "mlflow-trainer-password", # training's own MLflow user (infra/mlflow/bootstrap.py): never the admin
    "mlflow-flask-secret-key", # MLflow's CSRF key: basic-auth mode refuses to start without a static one
  ])

  length  = 40
  special = false
}

resource "random_id" "mlflow_webhook_encryption_key" {
  byte_length = 32
}

locals {
  secret_values = merge(
    { for name, password in random_password.main : name => password.result },
    {
      # A Fernet key: MLflow encrypts stored webhook secrets with it (without it a restart loses them).
      "mlflow-webhook-encryption-key" = replace(replace(random_id.mlflow_webhook_encryption_key.b64_std, "+", "-"), "/", "_")
      # MLflow's basic-auth configuration: no default admin password.
      "mlflow-auth-config" = join("\n", [
        "[mlflow]",
        "default_permission = NO_PERMISSIONS",
        "database_uri = postgresql+psycopg://mlflow:${random_password.main["mlflow-db-password"].result}@${google_sql_database_instance.mlflow.private_ip_address}/mlflow_auth",
        "admin_username = admin",
        "admin_password = ${random_password.main["mlflow-admin-password"].result}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
      ])
    },
  )
}

resource "google_secret_manager_secret" "main" {
  for_each = toset(keys(local.secret_values))

  secret_id = "sentiment-${each.key}"
  replication {
    auto {}
  }

  depends_on = [google_project_service.main]
}

resource "google_secret_manager_secret_version" "main" {
  for_each = google_secret_manager_secret.main

  secret      = each.value.id
  secret_data = local.secret_values[each.key]
}
