# What a control plane on GCP drives: a Cloud DNS zone it writes records into, one weights bucket per
# policy region pinned to that region's location, and a service account allowed only those two things.

resource "google_dns_managed_zone" "this" {
  count       = var.dns_name == null ? 0 : 1
  project     = var.project
  name        = var.name
  dns_name    = "${var.dns_name}."
  description = "Records the LLM failover plane routes (owner ${var.owner})."
  visibility  = "public"
  labels      = var.labels

  dnssec_config {
    state = var.dnssec
    # RSASHA256, not the provider's RSASHA1 default: SHA-1 signatures are deprecated (RFC 8624).
    default_key_specs {
      algorithm  = "rsasha256"
      key_length = 2048
      key_type   = "keySigning"
    }
    default_key_specs {
      algorithm  = "rsasha256"
      key_length = 1024
      key_type   = "zoneSigning"
    }
  }
}

resource "google_storage_bucket" "weights" {
  #checkov:skip=CKV_GCP_62:Access logging is optional (var.access_log_bucket): the log bucket is the team's own, and a bucket cannot log into itself.
  for_each = var.buckets

  project  = var.project
  name     = coalesce(each.value.name, "${var.name}-weights-${each.key}")
  location = upper(each.value.location)
  labels   = var.labels

  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]
    content {
      log_bucket        = logging.value
      log_object_prefix = "${var.name}-weights-${each.key}/"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

resource "google_service_account" "plane" {
  project      = var.project
  account_id   = "${var.name}-plane"
  display_name = "LLM failover control plane (${var.name})"
}
