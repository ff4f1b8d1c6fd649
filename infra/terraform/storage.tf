# Access logs of the other buckets.
resource "google_storage_bucket" "access_logs" {
  #checkov:skip=CKV_GCP_62:the access-log bucket does not log access to itself
  name                        = "${var.name_prefix}-access-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # logs only: a destroy empties it

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 365
    }
    action {
      type = "Delete"
    }
  }
}

# Cloud Storage writes access logs as this group; without the grant the log bucket stays empty. An organisation
# policy on member domains may refuse it (docs/permissions.md).
resource "google_storage_bucket_iam_member" "access_log_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

resource "google_storage_bucket" "mlflow_artifacts" {
  name                        = "${var.name_prefix}-mlflow-artifacts"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "enforced"
  force_destroy            = !var.deletion_protection # stateful: emptied only once protection is off

  versioning {
    enabled = true
  }
}

# Staged versions, gs://BUCKET/<model>/v<version>/: written once by the watcher, read by predict.
resource "google_storage_bucket" "staged_models" {
  name                        = "${var.name_prefix}-staged-models"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "enforced"
  force_destroy            = !var.deletion_protection # stateful: emptied only once protection is off

  versioning {
    enabled = true
  }
}

# The deploy gate's own evaluation set, gs://BUCKET/<model>/eval.jsonl: read by the watchers only, written by
# the operator who stages it (docs/promotion.md); no training identity or function may write it, so no training
# run can choose the examples its model is judged on.
resource "google_storage_bucket" "eval_sets" {
  name                        = "${var.name_prefix}-eval-sets"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "enforced"
  force_destroy            = !var.deletion_protection # stateful: emptied only once protection is off

  versioning {
    enabled = true # a replaced set can be told apart (the watcher records the sha256 it judged on) and restored
  }
}

resource "google_storage_bucket" "function_sources" {
  #checkov:skip=CKV_GCP_78:objects are named by content hash and never overwritten: versions would add nothing
  name                        = "${var.name_prefix}-function-sources"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "enforced"
  force_destroy            = true

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }
}

# The static page: the one public bucket, served through the load balancer (edge.tf, backend bucket).
resource "google_storage_bucket" "site" {
  #checkov:skip=CKV_GCP_114:the static web page is public by design
  name                        = "${var.name_prefix}-site"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "inherited"
  force_destroy            = true

  website {
    main_page_suffix = "index.html"
  }

  versioning {
    enabled = true
  }
}

resource "google_storage_bucket_iam_member" "site_public" {
  #checkov:skip=CKV_GCP_28:the static web page is public by design
  bucket = google_storage_bucket.site.name
  role   = "roles/storage.objectViewer"
  member = "allUsers"
}

resource "google_storage_bucket_object" "site" {
  for_each = toset(["app.js", "style.css", "favicon.svg"])

  bucket        = google_storage_bucket.site.name
  name          = each.value
  source        = "${path.module}/../../frontend/${each.value}"
  content_type  = lookup({ js = "text/javascript", css = "text/css", svg = "image/svg+xml" }, regex("[a-z]+$", each.value))
  cache_control = "no-cache"
}

# A bucket cannot send a Content-Security-Policy header: index.html carries it in a meta element. The page calls the
# API on its own origin (the load balancer's, edge.tf), so it may connect to 'self' and nothing else: no origin
# is added (the local stack, whose functions listen on ports of their own, names them: localdev/website.py).
resource "google_storage_bucket_object" "site_index" {
  bucket        = google_storage_bucket.site.name
  name          = "index.html"
  content_type  = "text/html"
  cache_control = "no-cache"
  content = templatefile("${path.module}/../../frontend/index.html", {
    connect_origins = ""
  })
}

# Same-origin paths: the load balancer's URL map sends /api/<name>/... to the function <name> (edge.tf).
resource "google_storage_bucket_object" "site_config" {
  bucket        = google_storage_bucket.site.name
  name          = "config.json"
  content_type  = "application/json"
  cache_control = "no-cache"
  # The function URLs, and how long a review is kept (predict's PREDICTION_RETENTION_DAYS), which the page states.
  content = jsonencode({
    predict_url               = "/api/predict"
    feedback_url              = "/api/feedback"
    prediction_retention_days = var.prediction_retention_days
  })
}

# Training data, gs://BUCKET/<model>/ (DATA_URI): the default data under yelp/, ood/ development sets, holdout/
# hashes of the deploy gate's evaluation set, and feedback/ exported by the retrain check. Versioned: an object
# replaced or deleted keeps its old generation, and every training run records the generations it read (its
# fingerprint), so the data of any run can be restored.
resource "google_storage_bucket" "training_data" {
  name                        = "${var.name_prefix}-training-data"
  location                    = var.region
  uniform_bucket_level_access = true

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }
  public_access_prevention = "enforced"               # review texts users typed (feedback/) live here
  force_destroy            = !var.deletion_protection # stateful: emptied only once protection is off

  versioning {
    enabled = true
  }
}
