output "route53" {
  description = "providers.route53 of the policy."
  value       = module.plane.route53
}

output "zone_name" {
  description = "The hosted zone's name."
  value       = module.plane.zone_name
}

output "name_servers" {
  description = "Delegate the zone to these at its parent."
  value       = module.plane.name_servers
}

output "buckets" {
  description = "regions[].bucket of the policy, by region name."
  value       = module.plane.buckets
}

output "global_accelerator" {
  description = "providers.global_accelerator's listener_arn and endpoint_groups; null without one."
  value       = module.plane.global_accelerator
}

output "role_arn" {
  description = "The role the control plane assumes."
  value       = module.plane.role_arn
}

output "endpoint_group_arns" {
  description = "Each policy region's endpoint group ARN; empty without an accelerator."
  value       = module.plane.endpoint_group_arns
}
