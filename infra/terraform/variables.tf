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

variable "min_eval_accuracy" {
  type        = number
  description = "Deploy gate: the lowest accuracy a version may score on the watcher's own evaluation set (MIN_EVAL_ACCURACY)."
  default     = 0.85

  validation {
    condition     = var.min_eval_accuracy >= 0 && var.min_eval_accuracy <= 1
    error_message = "min_eval_accuracy must be between 0 and 1."
  }
}

variable "max_eval_regression" {
  type        = number
  description = "Deploy gate: how far below the serving version's accuracy on the evaluation set a version may score (MAX_EVAL_REGRESSION)."
  default     = 0.02

  validation {
    condition     = var.max_eval_regression >= 0 && var.max_eval_regression <= 1
    error_message = "max_eval_regression must be between 0 and 1."
  }
}

variable "max_instances" {
  type        = map(number)
  description = "max_instance_count per function."
  default = {
    predict               = 20
    feedback              = 10
    feedback_operator     = 1
    registry_watcher      = 2
    registry_webhook      = 2
    on_production_changed = 1
    retrain               = 1
  }

  validation {
    condition     = alltrue([for v in values(var.max_instances) : v >= 1 && v <= 100])
    error_message = "every max_instance_count must be between 1 and 100."
  }
}

variable "allowed_origins" {
  type        = list(string)
  description = "Extra origins allowed by CORS besides the load balancer's own (the page's), for other web front ends."
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

# Evidence one client cannot forge (predict's and feedback's EVIDENCE_MAX_PER_CLIENT and CLIENT_ADDRESS_HOPS, read
# by sentiment_core.evidence.EvidenceSettings.from_env with the same defaults and checks; docs/promotion.md).
variable "evidence_max_per_client" {
  type        = number
  description = "EVIDENCE_MAX_PER_CLIENT: feedback answers of one client counted as rollout evidence (and exported for training) per model version and UTC hour; the rest are stored and counted in the statistics only."
  default     = 20
  nullable    = false

  validation {
    condition     = var.evidence_max_per_client == floor(var.evidence_max_per_client) && var.evidence_max_per_client >= 1 && var.evidence_max_per_client <= 100000
    error_message = "evidence_max_per_client must be a whole number between 1 and 100000, got ${var.evidence_max_per_client}."
  }
}

variable "evidence_client_address_hops" {
  type        = number
  description = "CLIENT_ADDRESS_HOPS: which X-Forwarded-For entry, counted from the right, is the client's address; 2 behind Google's external Application Load Balancer (<client-ip>,<load-balancer-ip>), 0 to trust no header."
  default     = 2
  nullable    = false

  validation {
    condition     = var.evidence_client_address_hops == floor(var.evidence_client_address_hops) && var.evidence_client_address_hops >= 0 && var.evidence_client_address_hops <= 10
    error_message = "evidence_client_address_hops must be a whole number between 0 and 10, got ${var.evidence_client_address_hops}."
  }
}

# The registry watcher's progressive rollout (ROLLOUT_*, read by sentiment_core.rollout.RolloutSettings.from_env):
# the same defaults and the same checks as the code, so that a bad value fails the plan instead of every start of
# the watcher. docs/promotion.md ("Progressive rollout") says what each one costs.
variable "rollout_steps" {
  type        = list(number)
  description = "ROLLOUT_STEPS: percent of traffic to a new production version at each step, increasing whole percents, the last 100; [100] switches all traffic at once."
  default     = [10, 50, 100]
  nullable    = false

  validation {
    condition     = alltrue([for step in var.rollout_steps : step == floor(step) && step >= 1 && step <= 100])
    error_message = "rollout_steps must be whole percents in 1..100, got ${jsonencode(var.rollout_steps)}."
  }

  validation {
    # range(1, 1) is empty: a single step has nothing to compare.
    condition     = alltrue([for i in range(1, max(1, length(var.rollout_steps))) : var.rollout_steps[i] > var.rollout_steps[i - 1]])
    error_message = "rollout_steps must increase, got ${jsonencode(var.rollout_steps)}."
  }

  validation {
    condition     = try(var.rollout_steps[length(var.rollout_steps) - 1] == 100, false)
    error_message = "rollout_steps must end with 100 (the new version takes all traffic), got ${jsonencode(var.rollout_steps)}."
  }
}

variable "rollout_bake_s" {
  type        = number
  description = "ROLLOUT_BAKE_S: minimum seconds a new version stays at each step before it may take more traffic."
  default     = 900
  nullable    = false

  validation {
    condition     = var.rollout_bake_s >= 0 && var.rollout_bake_s <= 604800
    error_message = "rollout_bake_s must be between 0 and 604800 (a week), got ${var.rollout_bake_s}."
  }
}

variable "rollout_min_feedback" {
  type        = number
  description = "ROLLOUT_MIN_FEEDBACK: feedback answers on a new version before its rollout may complete, shared by the steps below 100."
  default     = 1000
  nullable    = false

  validation {
    condition     = var.rollout_min_feedback == floor(var.rollout_min_feedback) && var.rollout_min_feedback >= 0 && var.rollout_min_feedback <= 100000
    error_message = "rollout_min_feedback must be a whole number between 0 and 100000, got ${var.rollout_min_feedback}."
  }
}

variable "max_calibration_error" {
  type        = number
  description = "Deploy gate: the highest expected calibration error (test set) a version may have; monitoring's label-free accuracy estimate relies on calibrated probabilities."
  default     = 0.05
  nullable    = false

  validation {
    condition     = var.max_calibration_error >= 0 && var.max_calibration_error <= 1
    error_message = "max_calibration_error must be between 0 and 1, got ${var.max_calibration_error}."
  }
}

variable "min_behaviour_pass_rate" {
  type        = number
  description = "Deploy gate: the lowest share of the behavioural suite (training/behaviour.py) a version's run must pass."
  default     = 0.8
  nullable    = false

  validation {
    condition     = var.min_behaviour_pass_rate >= 0 && var.min_behaviour_pass_rate <= 1
    error_message = "min_behaviour_pass_rate must be between 0 and 1, got ${var.min_behaviour_pass_rate}."
  }
}

variable "drift_min_predictions" {
  type        = number
  description = "DRIFT_MIN_PREDICTIONS: predictions a version needs in the window before drift can fire or resolve."
  default     = 200
  nullable    = false

  validation {
    condition     = var.drift_min_predictions >= 1 && var.drift_min_predictions <= 1000000 && floor(var.drift_min_predictions) == var.drift_min_predictions
    error_message = "drift_min_predictions must be a whole number between 1 and 1000000, got ${var.drift_min_predictions}."
  }
}

variable "drift_max_psi" {
  type        = number
  description = "DRIFT_MAX_PSI: drift when the population stability index of the scores or of the text lengths against the reference is above this."
  default     = 0.2
  nullable    = false

  validation {
    condition     = var.drift_max_psi >= 0.001 && var.drift_max_psi <= 10
    error_message = "drift_max_psi must be between 0.001 and 10, got ${var.drift_max_psi}."
  }
}

variable "drift_max_unknown_token_increase" {
  type        = number
  description = "DRIFT_MAX_UNKNOWN_TOKEN_INCREASE: drift when the unknown-token rate is more than this (a fraction: 0.05 is 5 points) above the reference's."
  default     = 0.05
  nullable    = false

  validation {
    condition     = var.drift_max_unknown_token_increase >= 0.001 && var.drift_max_unknown_token_increase <= 1
    error_message = "drift_max_unknown_token_increase must be between 0.001 and 1, got ${var.drift_max_unknown_token_increase}."
  }
}

variable "drift_max_positive_rate_shift" {
  type        = number
  description = "DRIFT_MAX_POSITIVE_RATE_SHIFT: drift when the positive-answer rate is more than this (a fraction) away from the reference's."
  default     = 0.1
  nullable    = false

  validation {
    condition     = var.drift_max_positive_rate_shift >= 0.001 && var.drift_max_positive_rate_shift <= 1
    error_message = "drift_max_positive_rate_shift must be between 0.001 and 1, got ${var.drift_max_positive_rate_shift}."
  }
}

variable "drift_window_hours" {
  type        = number
  description = "DRIFT_WINDOW_HOURS: the window the scheduled drift evaluation reads, in UTC hours (the current one included)."
  default     = 24
  nullable    = false

  validation {
    condition     = var.drift_window_hours >= 1 && var.drift_window_hours <= 168 && floor(var.drift_window_hours) == var.drift_window_hours
    error_message = "drift_window_hours must be a whole number between 1 and 168, got ${var.drift_window_hours}."
  }
}

variable "drift_evaluate_every_s" {
  type        = number
  description = "DRIFT_EVALUATE_EVERY_S: seconds between two scheduled drift evaluations (each reads up to drift_window_hours x 16 counter documents per version in service); 0 evaluates on every tick."
  default     = 600
  nullable    = false

  validation {
    condition     = var.drift_evaluate_every_s >= 0 && var.drift_evaluate_every_s <= 86400
    error_message = "drift_evaluate_every_s must be between 0 and 86400, got ${var.drift_evaluate_every_s}."
  }
}

variable "rollout_alpha" {
  type        = number
  description = "ROLLOUT_ALPHA: chance that a whole rollout of a version as good as the stable one is rolled back (all checks and ticks together)."
  default     = 0.05
  nullable    = false

  validation {
    condition     = var.rollout_alpha >= 0.0001 && var.rollout_alpha <= 0.5
    error_message = "rollout_alpha must be between 0.0001 and 0.5, got ${var.rollout_alpha}."
  }
}

variable "rollout_max_s" {
  type        = number
  description = "ROLLOUT_MAX_S: seconds after which a rollout not yet completed is rolled back (max_time)."
  default     = 86400
  nullable    = false

  validation {
    condition     = var.rollout_max_s >= 60 && var.rollout_max_s <= 604800
    error_message = "rollout_max_s must be between 60 and 604800 (a week), got ${var.rollout_max_s}."
  }

  validation {
    condition     = var.rollout_max_s >= var.rollout_bake_s * (length(var.rollout_steps) - 1)
    error_message = "rollout_max_s must be at least rollout_bake_s times the ${length(var.rollout_steps) - 1} steps before 100 (got ${var.rollout_max_s} and ${var.rollout_bake_s}), or every rollout would be rolled back for lack of time."
  }
}

variable "prediction_retention_days" {
  type        = number
  description = "Days a stored prediction (a review) is kept: predict writes expire_at = created_at + this, and Firestore's TTL policy deletes the record after it. Counters keep their totals."
  default     = 30

  validation {
    condition     = var.prediction_retention_days == floor(var.prediction_retention_days) && var.prediction_retention_days >= 1 && var.prediction_retention_days <= 3650
    error_message = "prediction_retention_days must be a whole number of days from 1 to 3650."
  }
}

variable "watcher_invokers" {
  type        = list(string)
  description = "Operators: principals that may call the registry watcher's GET /status and POST /rollout and list predictions on feedback-operator (for example group:ml-ops@example.com), besides the Scheduler's service account. Project owners may already."
  default     = []

  validation {
    condition     = alltrue([for m in var.watcher_invokers : can(regex("^(user|group|serviceAccount|domain):", m))])
    error_message = "watcher_invokers must name users, groups, service accounts or domains (user:..., group:...), never allUsers."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the stateful resources (Cloud SQL, MLflow's service, Firestore) from deletion and keep non-empty buckets; set false and apply before `terraform destroy`."
  default     = true
  nullable    = false
}

# Alerts and their notification (monitoring.tf; docs/alerts.md says what each alert watches and why).
variable "alert_email" {
  type        = string
  description = "Email address that alert incidents are sent to (an email notification channel). Empty: no channel; incidents open in the Cloud Monitoring console only."
  default     = ""
  nullable    = false

  validation {
    condition     = var.alert_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be one email address (alerts@example.com) or empty, got \"${var.alert_email}\"."
  }
}

variable "alert_error_ratio" {
  type        = number
  description = "Share of predict's or feedback's answers that may be 5xx over five minutes before an incident opens (with at least five of them)."
  default     = 0.05
  nullable    = false

  validation {
    condition     = var.alert_error_ratio > 0 && var.alert_error_ratio < 1
    error_message = "alert_error_ratio must be between 0 and 1 (exclusive), got ${var.alert_error_ratio}."
  }
}

variable "alert_latency_p95_ms" {
  type        = number
  description = "predict's 95th percentile latency in milliseconds (Cloud Run's, cold starts included) that, held for ten minutes, opens an incident."
  default     = 1000
  nullable    = false

  validation {
    condition     = var.alert_latency_p95_ms >= 50 && var.alert_latency_p95_ms <= 60000
    error_message = "alert_latency_p95_ms must be between 50 and 60000, got ${var.alert_latency_p95_ms}."
  }
}

# The load balancer in front of the page and the API (edge.tf; infra/terraform/README.md, "The load balancer").
variable "domain" {
  type        = string
  description = "Domain name of the page and the API (sentiment.example.com): HTTPS with a Google-managed certificate once its A record points at the load balancer's address (output load_balancer_ip), port 80 redirecting. Empty: plain http on the address."
  default     = ""
  nullable    = false

  validation {
    condition     = var.domain == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain))
    error_message = "domain must be a lowercase DNS name such as sentiment.example.com (no scheme, no port, no trailing dot) or empty, got \"${var.domain}\"."
  }
}

variable "rate_limits" {
  type = map(object({
    requests   = number
    interval_s = number
    ban_s      = number
  }))
  description = "Cloud Armor per client address and function: over `requests` in `interval_s` seconds, answers 429 and a ban of `ban_s` seconds (429 too). Keys: predict, feedback."
  default = {
    predict  = { requests = 60, interval_s = 60, ban_s = 600 }
    feedback = { requests = 120, interval_s = 60, ban_s = 600 } # the page reads statistics after each answer
  }
  nullable = false

  validation {
    condition     = toset(keys(var.rate_limits)) == toset(["predict", "feedback"])
    error_message = "rate_limits must have exactly the keys predict and feedback, got ${jsonencode(keys(var.rate_limits))}."
  }

  validation {
    condition     = alltrue([for l in values(var.rate_limits) : l.requests == floor(l.requests) && l.requests >= 1 && l.requests <= 100000])
    error_message = "rate_limits must give each function a whole number of requests between 1 and 100000."
  }

  validation {
    # The intervals Cloud Armor accepts for a rate-limit threshold.
    condition     = alltrue([for l in values(var.rate_limits) : contains([10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600], l.interval_s)])
    error_message = "rate_limits must give each function an interval_s of 10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700 or 3600."
  }

  validation {
    condition     = alltrue([for l in values(var.rate_limits) : l.ban_s == floor(l.ban_s) && l.ban_s >= 60 && l.ban_s <= 86400])
    error_message = "rate_limits must give each function a ban_s of whole seconds between 60 and 86400."
  }
}

variable "site_cdn" {
  type        = bool
  description = "Cloud CDN on the page's backend bucket. Its files are sent with Cache-Control: no-cache (storage.tf), so it saves little."
  default     = false
  nullable    = false
}

# The bill (edge.tf): a budget alerts, it does not cap; max_instances and rate_limits bound the spend.
variable "billing_account" {
  type        = string
  description = "Billing account id (XXXXXX-XXXXXX-XXXXXX) to hold a monthly budget on the project; the deployer needs roles/billing.costsManager on it. Empty: no budget."
  default     = ""
  nullable    = false

  validation {
    condition     = var.billing_account == "" || can(regex("^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$", var.billing_account))
    error_message = "billing_account must be a billing account id such as 012345-6789AB-CDEF01, or empty."
  }
}

variable "budget_amount" {
  type        = number
  description = "The project's monthly budget, in whole units of the billing account's currency."
  default     = 100
  nullable    = false

  validation {
    condition     = var.budget_amount == floor(var.budget_amount) && var.budget_amount >= 1
    error_message = "budget_amount must be a whole number of at least 1, got ${var.budget_amount}."
  }
}

variable "budget_thresholds" {
  type        = list(number)
  description = "Shares of budget_amount whose crossing by the month's actual spend sends an alert (1.0 = the whole budget)."
  default     = [0.5, 0.9, 1.0]
  nullable    = false

  validation {
    condition     = length(var.budget_thresholds) >= 1 && alltrue([for v in var.budget_thresholds : v > 0 && v <= 10])
    error_message = "budget_thresholds must hold at least one share between 0 (exclusive) and 10, got ${jsonencode(var.budget_thresholds)}."
  }
}

# Continuous training (training.tf, functions/retrain; README.md "Retraining").
variable "training_image" {
  type        = string
  description = "The training image (training/Dockerfile) by digest: REGION-docker.pkg.dev/PROJECT/REPOSITORY/training@sha256:... (make deploy builds it and passes its digest)."

  validation {
    condition     = can(regex("^[a-z0-9-]+-docker\\.pkg\\.dev/[a-z0-9-]+/[a-z0-9_-]+/[a-z0-9._/-]+@sha256:[0-9a-f]{64}$", var.training_image))
    error_message = "training_image must be an Artifact Registry image pinned by digest (...@sha256:<64 hex>), never a tag."
  }
}

variable "retrain_args" {
  type        = string
  description = "Extra arguments of python -m training.train for every triggered run (shell words, e.g. \"--epochs 4\"); part of the training fingerprint, so a change starts a run."
  default     = ""

  validation {
    condition     = !can(regex("[;&|`$<>]", var.retrain_args))
    error_message = "retrain_args must be plain shell words (no ; & | ` $ < >)."
  }
}

variable "auto_promote" {
  type        = string
  description = "never: a challenger is only registered; canary: one that beats the champion significantly and is worse on no set gets the alias production, and the progressive rollout guards it."
  default     = "never"

  validation {
    condition     = contains(["never", "canary"], var.auto_promote)
    error_message = "auto_promote must be never or canary."
  }
}

variable "retrain_cron" {
  type        = string
  description = "How often Cloud Scheduler ticks the retrain check."
  default     = "*/10 * * * *"
}

variable "retrain_min_interval_s" {
  type        = number
  description = "RETRAIN_MIN_INTERVAL_S: at least this long between two training runs the check starts (debounce), in seconds."
  default     = 3600

  validation {
    condition     = var.retrain_min_interval_s == floor(var.retrain_min_interval_s) && var.retrain_min_interval_s >= 0 && var.retrain_min_interval_s <= 604800
    error_message = "retrain_min_interval_s must be a whole number of seconds between 0 and 604800 (7 days)."
  }
}

variable "retrain_min_feedback" {
  type        = number
  description = "RETRAIN_MIN_FEEDBACK: new user answers needed before the check exports feedback into the data bucket."
  default     = 100

  validation {
    condition     = var.retrain_min_feedback == floor(var.retrain_min_feedback) && var.retrain_min_feedback >= 1 && var.retrain_min_feedback <= 1000000
    error_message = "retrain_min_feedback must be a whole number between 1 and 1000000."
  }
}

variable "feedback_export_interval_s" {
  type        = number
  description = "FEEDBACK_EXPORT_INTERVAL_S: at most one feedback export per window, in seconds."
  default     = 86400

  validation {
    condition     = var.feedback_export_interval_s == floor(var.feedback_export_interval_s) && var.feedback_export_interval_s >= 0 && var.feedback_export_interval_s <= 2592000
    error_message = "feedback_export_interval_s must be a whole number of seconds between 0 and 2592000 (30 days)."
  }
}

variable "retrain_backoff_s" {
  type        = number
  description = "RETRAIN_BACKOFF_S: first delay before the check retries a failed run, doubling each time (capped at a day)."
  default     = 600

  validation {
    condition     = var.retrain_backoff_s == floor(var.retrain_backoff_s) && var.retrain_backoff_s >= 60 && var.retrain_backoff_s <= 86400
    error_message = "retrain_backoff_s must be a whole number of seconds between 60 and 86400."
  }
}

variable "training_timeout_s" {
  type        = number
  description = "Task timeout of the training job, in seconds (Cloud Run jobs allow up to 604800, 7 days); the check counts a run as failed 600 s after it."
  default     = 3600

  validation {
    condition     = var.training_timeout_s == floor(var.training_timeout_s) && var.training_timeout_s >= 600 && var.training_timeout_s <= 604800
    error_message = "training_timeout_s must be a whole number of seconds between 600 and 604800 (7 days)."
  }
}

variable "training_cpu" {
  type        = string
  description = "vCPUs of the training job's task (Cloud Run jobs: 1, 2, 4, 6 or 8)."
  default     = "2"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.training_cpu)
    error_message = "training_cpu must be 1, 2, 4, 6 or 8."
  }
}

variable "training_memory" {
  type        = string
  description = "Memory of the training job's task, whole GiB: Cloud Run jobs allow up to 4 GiB per vCPU (32Gi at 8 vCPUs), and at least 2Gi from 4 vCPUs, 4Gi from 6."
  default     = "4Gi"

  validation {
    condition     = can(regex("^([1-9]|[12][0-9]|3[0-2])Gi$", var.training_memory))
    error_message = "training_memory must be whole GiB between 1Gi and 32Gi, e.g. 4Gi."
  }

  validation {
    condition = (
      !can(regex("^[0-9]+Gi$", var.training_memory)) || (
        tonumber(trimsuffix(var.training_memory, "Gi")) <= 4 * tonumber(var.training_cpu) &&
        tonumber(trimsuffix(var.training_memory, "Gi")) >= lookup({ "4" = 2, "6" = 4, "8" = 4 }, var.training_cpu, 1)
      )
    )
    error_message = "training_memory must fit training_cpu as Cloud Run jobs allow: at most 4Gi per vCPU; at least 2Gi with 4 vCPUs, 4Gi with 6 or 8."
  }
}
