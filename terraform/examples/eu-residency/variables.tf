variable "name" {
  description = "Names the role, the service account and (with the region) the buckets, e.g. llm-eu."
  type        = string
  default     = "llm-eu"
}

variable "zone_name" {
  description = "The hosted zone to create; the chat service answers at chat.ZONE."
  type        = string
  default     = "llm.example.eu"
}

variable "owner" {
  description = "The policy's providers.route53.owner."
  type        = string
  default     = "eu-prod"
}

variable "gcp_project" {
  description = "The GCP project of the europe-west4 region's bucket and the plane's service account."
  type        = string
}

variable "trusted_principal_arns" {
  description = "Who may assume the control plane's AWS role: the daemon's host or pod role."
  type        = list(string)
}

variable "force_destroy" {
  description = "Whether destroying the stack deletes the weights (throwaway stacks only)."
  type        = bool
  default     = false
}
