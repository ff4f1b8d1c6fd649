output "predict_url" {
  description = "predict through the load balancer (its own run.app URL admits internal and load-balancer traffic only)."
  value       = "${local.edge_origin}/api/predict"
}

output "feedback_url" {
  description = "feedback through the load balancer (/statistics, /predictions, ... under it)."
  value       = "${local.edge_origin}/api/feedback"
}

output "load_balancer_ip" {
  description = "The load balancer's address: the A record of var.domain points here."
  value       = google_compute_global_address.main.address
}

output "feedback_operator_url" {
  description = "URL of feedback-operator: GET /predictions lists every user's review text, for watcher_invokers only (identity token)."
  value       = google_cloudfunctions2_function.main["feedback-operator"].service_config[0].uri
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
  description = "The web page, through the load balancer (https://domain, or http://address without a domain)."
  value       = "${local.site_url}/"
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

output "data_bucket" {
  description = "DATA_URI of training: gs://BUCKET/<model>/ (yelp/, ood/, holdout/, feedback/); a new file there starts a retraining run."
  value       = local.data_uri
}

output "training_job" {
  description = "The Cloud Run job that trains (gcloud run jobs execute train --region REGION)."
  value       = google_cloud_run_v2_job.train.name
}

output "retrain_url" {
  description = "URL of the retrain check (internal ingress; the Scheduler's account only)."
  value       = google_cloudfunctions2_function.main["retrain"].service_config[0].uri
}

output "training_image" {
  description = "The training image the job runs, by digest (a destroy passes it back unchanged)."
  value       = var.training_image
}
