terraform {
  required_version = ">= 1.9, < 2.0" # 1.9: a variable's validation may read other variables (rollout_max_s)

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.10, < 7.0"
    }
    # google_project_service_identity (the Pub/Sub service agent, created before the grants that name it) is
    # only in the beta provider; nothing else uses it.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.10, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
  }

  # Remote state: copy backend.tf.example to backend.tf and name your state bucket (README, deployment guide).
}

provider "google" {
  project = var.project_id
  region  = var.region
}

# The Budget API refuses user credentials (make deploy's) without a quota project: this alias, used by the budget
# alone (edge.tf), bills its calls to the project, whose billingbudgets API Terraform enables (locals.tf).
provider "google" {
  alias                 = "billing"
  project               = var.project_id
  region                = var.region
  user_project_override = true
  billing_project       = var.project_id
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
