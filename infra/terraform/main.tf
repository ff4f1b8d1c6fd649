resource "google_project_service" "main" {
  for_each = local.services

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

resource "google_service_account" "main" {
  for_each = local.service_accounts

  project      = var.project_id
  account_id   = "sentiment-${each.key}"
  display_name = each.value

  depends_on = [google_project_service.main]
}

data "google_project" "main" {
  project_id = var.project_id
}
