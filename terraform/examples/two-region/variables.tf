variable "name" {
  description = "Names the role, the accelerator and (with the Region) the buckets, e.g. llm-prod."
  type        = string
  default     = "llm-prod"
}

variable "zone_name" {
  description = "The hosted zone to create; the chat service answers at chat.ZONE."
  type        = string
  default     = "llm.example.com"
}

variable "owner" {
  description = "The policy's providers.route53.owner."
  type        = string
  default     = "prod"
}

variable "trusted_principal_arns" {
  description = "Who may assume the control plane's role: the daemon's host or pod role."
  type        = list(string)
}

variable "accelerator_endpoints" {
  description = "Endpoints (ALB, NLB or Elastic IP ARNs) per policy region for a Global Accelerator; empty for none."
  type        = map(list(string))
  default     = {}
}

variable "force_destroy" {
  description = "Whether destroying the stack deletes the weights and the zone's records (throwaway stacks only)."
  type        = bool
  default     = false
}
