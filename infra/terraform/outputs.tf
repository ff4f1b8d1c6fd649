output "predict_url" {
  description = "Public URL of predict."
  value       = google_cloudfunctions2_function.main["predict"].service_config[0].uri
}

output "feedback_url" {
  description = "Public URL of feedback."
  value       = google_cloudfunctions2_function.main["feedback"].service_config[0].uri
}

output "registry_watcher_url" {
  description = "URL of the watcher's tick (Scheduler's service account only)."
  value       = google_cloudfunctions2_function.main["registry-watcher"].service_config[0].uri
}

output "registry_webhook_url" {
  description = "URL to register as MLflow's webhook, with path /webhook (internal ingress, HMAC-signed)."
  value       = "${google_cloudfunctions2_function.main["registry-webhook"].service_config[0].uri}/webhook"
}

output "redeploy_url" {
  description = "URL of the redeploy (on_production_changed): the push endpoint of the topic's subscription, internal."
  value       = google_cloudfunctions2_function.main["on-production-changed"].service_config[0].uri
}

output "mlflow_url" {
  description = "MLflow tracking server and UI (IAM-protected: `gcloud run services proxy mlflow`)."
  value       = google_cloud_run_v2_service.mlflow.uri
}

output "site_url" {
  description = "The static web page."
  value       = "${local.site_url}/index.html"
}

output "serving_bucket" {
  description = "Bucket of the staged model versions."
  value       = google_storage_bucket.staged_models.name
}

output "eval_set_uri" {
  description = "Where the operator stages the deploy gate's evaluation set (docs/promotion.md); only the watchers read it."
  value       = "gs://${google_storage_bucket.eval_sets.name}/${var.model_name}/eval.jsonl"
}

output "topic" {
  description = "Pub/Sub topic of production changes."
  value       = google_pubsub_topic.production_changed.id
}

output "dashboard_url" {
  description = "The serving dashboard in the Cloud console (docs/alerts.md)."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.serving.id), 3)}?project=${var.project_id}"
}
