variable "name" {
  description = "Names the IAM role and the accelerator, e.g. llm-prod."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name is 3-32 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "zone_name" {
  description = "Create a public hosted zone of this name; or give zone_id to use an existing one."
  type        = string
  default     = null
  validation {
    condition     = (var.zone_name == null) != (var.zone_id == null)
    error_message = "Give exactly one of zone_name (a zone to create) and zone_id (an existing zone)."
  }
  validation {
    condition     = var.zone_name == null || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.zone_name))
    error_message = "zone_name is a lower-case DNS name without a final dot, e.g. llm.example.com."
  }
}

variable "zone_id" {
  description = "An existing hosted zone's id (e.g. Z1D633PJN98FT9); or give zone_name to create one."
  type        = string
  default     = null
  validation {
    condition     = var.zone_id == null || can(regex("^[A-Z0-9]{1,32}$", var.zone_id))
    error_message = "zone_id is a hosted zone id such as Z1D633PJN98FT9 (no /hostedzone/ prefix)."
  }
}

variable "owner" {
  description = "The policy's providers.route53.owner: the plane marks the records it owns with it."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9-]{1,63}$", var.owner))
    error_message = "owner is 1-63 characters of a-z, 0-9 and '-'."
  }
}

variable "service_dns_names" {
  description = "The dns_name of every service the plane routes in this zone; the role may write only these names (and their ownership markers)."
  type        = list(string)
  validation {
    condition     = length(var.service_dns_names) > 0 && alltrue([for n in var.service_dns_names : can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$", n))])
    error_message = "service_dns_names is a non-empty list of lower-case DNS names without a final dot."
  }
}

variable "buckets" {
  description = "Each policy region's bucket, as s3://BUCKET/PREFIX (the bucket submodule's url output), keyed by the policy's region name."
  type        = map(string)
  validation {
    condition     = alltrue([for k, u in var.buckets : can(regex("^[a-z][a-z0-9-]{0,62}$", k)) && can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9_/-]+$", u))])
    error_message = "buckets maps policy region names (a-z, 0-9, '-') to s3://BUCKET/PREFIX URLs with a prefix."
  }
}

variable "source_buckets" {
  description = "Where models are synced from (policy models[].source, s3://BUCKET/PREFIX): the role may read them, for server-side copies."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for u in var.source_buckets : can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9_/-]+$", u))])
    error_message = "source_buckets are s3://BUCKET/PREFIX URLs with a prefix."
  }
}

variable "accelerator" {
  description = "A Global Accelerator with one endpoint group per policy region (key) in aws_region; null for none. The plane turns the groups' dials and weights; terraform sets up the endpoints and then leaves those alone."
  type = object({
    port = optional(number, 443)
    endpoint_groups = map(object({
      aws_region = string
      endpoints  = list(string)
    }))
    flow_logs_bucket = optional(string)
  })
  default = null
  validation {
    condition     = var.accelerator == null || try(length(var.accelerator.endpoint_groups) > 0 && length(distinct([for g in values(var.accelerator.endpoint_groups) : g.aws_region])) == length(var.accelerator.endpoint_groups), false)
    error_message = "An accelerator needs at least one endpoint group, and at most one per AWS Region (a listener allows no more)."
  }
  validation {
    condition     = var.accelerator == null || try(alltrue([for g in values(var.accelerator.endpoint_groups) : can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", g.aws_region))]), false)
    error_message = "Each endpoint group's aws_region is an AWS Region name such as eu-west-1."
  }
}

variable "trusted_principal_arns" {
  description = "IAM principals (e.g. the role the daemon's host or pod runs as) allowed to assume the control plane's role."
  type        = list(string)
  validation {
    condition     = length(var.trusted_principal_arns) > 0 && alltrue([for a in var.trusted_principal_arns : can(regex("^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:.+$", a))])
    error_message = "trusted_principal_arns is a non-empty list of IAM principal ARNs."
  }
}

variable "force_destroy" {
  description = "Whether destroying the module deletes every record left in a zone it created (throwaway stacks only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for everything the module creates."
  type        = map(string)
  default     = {}
}
