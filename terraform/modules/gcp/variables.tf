variable "project" {
  description = "The GCP project everything is created in (the policy's providers.cloud_dns.project)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project is a GCP project id: 6-30 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "name" {
  description = "Names the service account, its roles, the managed zone and (with the region key) the buckets, e.g. llm-prod."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{3,20}[a-z0-9]$", var.name))
    error_message = "name is 5-22 characters of a-z, 0-9 and '-', starting with a letter (the service account id is NAME-plane)."
  }
}

variable "dns_name" {
  description = "Create a public Cloud DNS managed zone for this name (e.g. llm.example.com); null for buckets and the service account only."
  type        = string
  default     = null
  validation {
    condition     = var.dns_name == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.dns_name))
    error_message = "dns_name is a lower-case DNS name without a final dot, e.g. llm.example.com."
  }
}

variable "owner" {
  description = "The policy's providers.cloud_dns.owner: the plane marks the records it owns with it."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9-]{1,63}$", var.owner))
    error_message = "owner is 1-63 characters of a-z, 0-9 and '-'."
  }
}

variable "dnssec" {
  description = "Sign the zone (on); the DS record at the parent is the zone owner's step. off only where the parent cannot take one."
  type        = string
  default     = "on"
  validation {
    condition     = contains(["on", "off"], var.dnssec)
    error_message = "dnssec is on or off."
  }
}

variable "buckets" {
  description = "One weights bucket per policy region (key: the region's name) in a GCS location (a region such as europe-west4, so the weights stay where the region's jurisdiction allows). name defaults to NAME-weights-KEY."
  type = map(object({
    location = string
    name     = optional(string)
  }))
  validation {
    condition     = alltrue([for k, b in var.buckets : can(regex("^[a-z][a-z0-9-]{0,62}$", k)) && can(regex("^[a-z]+-[a-z]+[0-9]+$", lower(b.location)))])
    error_message = "buckets maps policy region names (a-z, 0-9, '-') to a single GCS region such as europe-west4 (not a multi-region: residency needs the region pinned)."
  }
}

variable "allowed_locations" {
  description = "Residency guard: when not empty, every bucket's location must be one of these GCS regions (e.g. the EU ones)."
  type        = list(string)
  default     = []
  validation {
    condition     = length(var.allowed_locations) == 0 || alltrue([for b in values(var.buckets) : contains([for l in var.allowed_locations : lower(l)], lower(b.location))])
    error_message = "A bucket's location is not in allowed_locations: its weights would be stored outside the jurisdiction."
  }
}

variable "prefix" {
  description = "The folder in each bucket the plane keeps models under (bucket URL gs://BUCKET/PREFIX)."
  type        = string
  default     = "models"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", var.prefix))
    error_message = "prefix is one or more path segments of A-Z, a-z, 0-9, '_' and '-'."
  }
}

variable "source_buckets" {
  description = "GCS buckets models are synced from (policy models[].source): the service account may read them."
  type        = list(string)
  default     = []
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object version is kept before it is deleted."
  type        = number
  default     = 30
}

variable "access_log_bucket" {
  description = "A bucket to write the weights buckets' access logs into; null for none."
  type        = string
  default     = null
}

variable "kms_key_name" {
  description = "A Cloud KMS key to encrypt the weights with (customer-managed); null for Google-managed keys."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Whether destroying the stack deletes the weights (throwaway stacks only)."
  type        = bool
  default     = false
}

variable "labels" {
  description = "Labels on the buckets and the zone."
  type        = map(string)
  default     = {}
}
