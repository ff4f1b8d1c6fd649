locals {
  services = toset([
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
  ])

  # One service account per component: each gets only the roles its code uses (iam.tf).
  service_accounts = {
    predict           = "predict function"
    feedback          = "feedback function"
    feedback-operator = "feedback deployed for operators: lists predictions (IAM only)"
    registry-watcher  = "registry_watcher function (scheduler ticks)"
    registry-webhook  = "registry_watcher deployed as MLflow's webhook receiver"
    redeployer        = "on_production_changed function (the redeploy of predict)"
    scheduler         = "Cloud Scheduler's identity when it ticks the watcher and the retrain check"
    pubsub-push       = "Pub/Sub's identity when it pushes events to the redeploy"
    mlflow            = "MLflow tracking server on Cloud Run"
    build             = "Cloud Build's identity when it builds the functions' images"
    retrain           = "retrain check function: exports feedback, starts the training job"
    train             = "training job (Cloud Run job train): reads the data bucket, writes MLflow"
  }

  # Who allUsers may invoke (functions.tf): predict and feedback, which accept load-balancer traffic only (edge.tf),
  # and the HMAC-checked webhook receiver, internal: MLflow cannot attach a Google identity. Written out, not
  # derived, so that checkov sees each binding and the function it opens (infra/checkov/public_behind_lb.yaml).
  public_functions = toset(["predict", "feedback", "registry-webhook"])

  # The deployed functions, each with its own identity. registry_watcher's source is deployed twice (the tick and
  # the webhook receiver); the webhook receiver is the only internal function that allUsers may invoke
  # (docs/architecture.md). The redeploy is a source of its own: it carries no MLflow setting or secret.
  functions = {
    predict = {
      source          = "predict"
      entry_point     = "predict"
      service_account = "predict"
      ingress         = "ALLOW_INTERNAL_AND_GCLB" # the load balancer (edge.tf) is the way in
      memory          = "1Gi"
      timeout         = 30
    }
    feedback = {
      source          = "feedback"
      entry_point     = "feedback"
      service_account = "feedback"
      ingress         = "ALLOW_INTERNAL_AND_GCLB" # the load balancer (edge.tf) is the way in
      memory          = "512Mi"
      timeout         = 30
    }
    # feedback's source again with GET /predictions on (every user's review text): for operators only, with an
    # identity token (ingress all, Cloud Run IAM admits var.watcher_invokers alone; functions.tf).
    feedback-operator = {
      source          = "feedback"
      entry_point     = "feedback"
      service_account = "feedback-operator"
      ingress         = "ALLOW_ALL"
      memory          = "512Mi"
      timeout         = 30
    }
    # Ingress all so that operators reach /status and /rollout from a laptop or Cloud Shell; Cloud Run IAM
    # still admits only the Scheduler's account and var.watcher_invokers (functions.tf).
    registry-watcher = {
      source          = "registry_watcher"
      entry_point     = "registry_watcher"
      service_account = "registry-watcher"
      ingress         = "ALLOW_ALL"
      memory          = "1Gi"
      timeout         = 120
    }
    registry-webhook = {
      source          = "registry_watcher"
      entry_point     = "registry_watcher"
      service_account = "registry-webhook"
      ingress         = "ALLOW_INTERNAL_ONLY"
      memory          = "1Gi"
      timeout         = 120
    }
    on-production-changed = {
      source          = "redeploy"
      entry_point     = "on_production_changed"
      service_account = "redeployer"
      ingress         = "ALLOW_INTERNAL_ONLY"
      memory          = "512Mi"
      timeout         = 540
    }
    # The retrain check: ticked by the Scheduler only (internal ingress admits it: same project); it starts the
    # Cloud Run job `train` (training.tf) and returns, the run outlives the tick.
    retrain = {
      source          = "retrain"
      entry_point     = "retrain_check"
      service_account = "retrain"
      ingress         = "ALLOW_INTERNAL_ONLY"
      memory          = "1Gi"
      timeout         = 300
    }
  }

  max_instances = {
    predict               = var.max_instances["predict"]
    feedback              = var.max_instances["feedback"]
    feedback-operator     = var.max_instances["feedback_operator"]
    registry-watcher      = var.max_instances["registry_watcher"]
    registry-webhook      = var.max_instances["registry_webhook"]
    on-production-changed = var.max_instances["on_production_changed"]
    retrain               = var.max_instances["retrain"]
  }

  # The page and the API share the load balancer's origin (edge.tf): the bucket's storage.googleapis.com URL,
  # which every bucket's page shares, is no allowed origin.
  site_url       = local.edge_origin
  site_origin    = local.edge_origin
  cors_origins   = join(",", concat([local.site_origin], var.allowed_origins))
  topic          = "model-production-changed"
  predict_run_id = "projects/${var.project_id}/locations/${var.region}/services/predict"

  public_env = {
    GOOGLE_CLOUD_PROJECT = var.project_id
    FIRESTORE_DATABASE   = google_firestore_database.main.name
    FIRESTORE_TIMEOUT_S  = "3"
    ALLOWED_ORIGINS      = local.cors_origins
  }

  # Whose answers count as rollout evidence, and how many per client (predict and feedback both record answers;
  # sentiment_core.evidence.EvidenceSettings, docs/promotion.md "Evidence one client cannot forge").
  evidence_env = {
    EVIDENCE_MAX_PER_CLIENT = tostring(var.evidence_max_per_client)
    CLIENT_ADDRESS_HOPS     = tostring(var.evidence_client_address_hops)
  }

  # Where the deployment document lives (its own database, iam.tf): read by the watcher and the redeploy alike.
  state_env = {
    GOOGLE_CLOUD_PROJECT = var.project_id
    FIRESTORE_DATABASE   = google_firestore_database.main.name
    DEPLOYMENTS_DATABASE = google_firestore_database.deployments.name
    MODEL_NAME           = var.model_name
  }

  # The progressive rollout's policy settings (variables.tf checks them as RolloutSettings.from_env does).
  rollout_env = {
    ROLLOUT_STEPS        = join(",", var.rollout_steps)
    ROLLOUT_BAKE_S       = tostring(var.rollout_bake_s)
    ROLLOUT_MIN_FEEDBACK = tostring(var.rollout_min_feedback)
    ROLLOUT_ALPHA        = tostring(var.rollout_alpha)
    ROLLOUT_MAX_S        = tostring(var.rollout_max_s)
  }

  # Monitoring's drift rule (variables.tf checks them as DriftSettings.from_env does; docs/monitoring.md).
  drift_env = {
    DRIFT_MIN_PREDICTIONS            = tostring(var.drift_min_predictions)
    DRIFT_MAX_PSI                    = tostring(var.drift_max_psi)
    DRIFT_MAX_UNKNOWN_TOKEN_INCREASE = tostring(var.drift_max_unknown_token_increase)
    DRIFT_MAX_POSITIVE_RATE_SHIFT    = tostring(var.drift_max_positive_rate_shift)
    DRIFT_WINDOW_HOURS               = tostring(var.drift_window_hours)
    DRIFT_EVALUATE_EVERY_S           = tostring(var.drift_evaluate_every_s)
  }

  watcher_env = merge(local.state_env, local.rollout_env, local.drift_env, {
    MLFLOW_TRACKING_URI      = google_cloud_run_v2_service.mlflow.uri
    MLFLOW_TRACKING_USERNAME = "watcher"
    MLFLOW_IAM_AUDIENCE      = google_cloud_run_v2_service.mlflow.uri
    MLFLOW_TIMEOUT_S         = "2"
    SERVING_BUCKET           = google_storage_bucket.staged_models.name
    PUBSUB_TOPIC             = google_pubsub_topic.production_changed.id
    MIN_VALIDATION_ACCURACY  = tostring(var.min_validation_accuracy)
    MAX_CALIBRATION_ERROR    = tostring(var.max_calibration_error)
    MIN_BEHAVIOUR_PASS_RATE  = tostring(var.min_behaviour_pass_rate)
    EVAL_SET_URI             = "gs://${google_storage_bucket.eval_sets.name}/${var.model_name}/eval.jsonl"
    MIN_EVAL_ACCURACY        = tostring(var.min_eval_accuracy)
    MAX_EVAL_REGRESSION      = tostring(var.max_eval_regression)
  })

  # feedback reads the deployment document (read only, iam.tf) for GET /statistics.
  feedback_env = merge(local.public_env, local.drift_env, {
    MODEL_NAME           = var.model_name
    DEPLOYMENTS_DATABASE = google_firestore_database.deployments.name
  })

  # SERVING_BUCKET: the redeploy deploys a version only from its own folder there (docs/promotion.md).
  redeploy_env = merge(local.state_env, {
    DEPLOYER        = "cloud_run"
    PREDICT_SERVICE = local.predict_run_id
    SERVING_BUCKET  = google_storage_bucket.staged_models.name
  })

  # The retrain check (functions/retrain; README.md "Retraining"): the runner is the Cloud Run job, whose image and
  # arguments it passes as they are on the job (training.tf), so that its fingerprint and the run's agree.
  retrain_env = merge(local.state_env, {
    DATA_URI                   = local.data_uri
    RETRAIN_RUNNER             = "cloud_run"
    TRAINING_JOB               = local.training_job
    RETRAIN_ARGS               = var.retrain_args
    TRAINING_IMAGE             = var.training_image
    AUTO_PROMOTE               = var.auto_promote
    RETRAIN_MIN_INTERVAL_S     = tostring(var.retrain_min_interval_s)
    RETRAIN_MIN_FEEDBACK       = tostring(var.retrain_min_feedback)
    FEEDBACK_EXPORT_INTERVAL_S = tostring(var.feedback_export_interval_s)
    RETRAIN_BACKOFF_S          = tostring(var.retrain_backoff_s)
    # A run not seen to finish by then counts as failed: the job's own timeout plus its start-up.
    RETRAIN_TIMEOUT_S        = tostring(var.training_timeout_s + 600)
    MLFLOW_TRACKING_URI      = google_cloud_run_v2_service.mlflow.uri
    MLFLOW_TRACKING_USERNAME = "watcher"
    MLFLOW_IAM_AUDIENCE      = google_cloud_run_v2_service.mlflow.uri
    MLFLOW_TIMEOUT_S         = "5"
    MLFLOW_EXPERIMENT        = "yelp-sentiment" # training.train --experiment, infra/mlflow/bootstrap.py
  })

  # allUsers may invoke the webhook receiver (MLflow sends no Google identity): it serves POST /webhook only.
  function_env = {
    predict = merge(local.public_env, local.evidence_env, {
      MODEL_URI                 = var.initial_model_uri
      ORT_THREADS               = "1"
      PREDICTION_RETENTION_DAYS = tostring(var.prediction_retention_days) # expire_at, deleted by the TTL policy
    })
    # /statistics, /monitoring; GET /predictions (everyone's review text) only on the operators' deployment.
    feedback = merge(local.feedback_env, local.evidence_env, { PREDICTIONS_LISTING = "off" })
    # Reached on its own run.app URL (ingress all), where Google's front end appends the client last: 1 hop.
    feedback-operator     = merge(local.feedback_env, local.evidence_env, { PREDICTIONS_LISTING = "on", CLIENT_ADDRESS_HOPS = "1" })
    registry-watcher      = merge(local.watcher_env, { WEBHOOK_RECEIVER_ONLY = "false" })
    registry-webhook      = merge(local.watcher_env, { WEBHOOK_RECEIVER_ONLY = "true" })
    on-production-changed = local.redeploy_env
    retrain               = local.retrain_env
  }

  function_secrets = {
    predict               = { FEEDBACK_TOKEN_SECRET = google_secret_manager_secret.main["feedback-token"].secret_id }
    feedback              = { FEEDBACK_TOKEN_SECRET = google_secret_manager_secret.main["feedback-token"].secret_id }
    feedback-operator     = { FEEDBACK_TOKEN_SECRET = google_secret_manager_secret.main["feedback-token"].secret_id }
    registry-watcher      = local.watcher_secrets
    registry-webhook      = local.watcher_secrets
    on-production-changed = {}
    # The check reads runs (the last fingerprint) as MLflow's watcher, whose READ on the experiment it needs.
    retrain = { MLFLOW_TRACKING_PASSWORD = google_secret_manager_secret.main["mlflow-watcher-password"].secret_id }
  }

  watcher_secrets = {
    MLFLOW_WEBHOOK_SECRET    = google_secret_manager_secret.main["mlflow-webhook"].secret_id
    MLFLOW_TRACKING_PASSWORD = google_secret_manager_secret.main["mlflow-watcher-password"].secret_id
  }
}
