# Named as the policy YAML names them: `controlplane policy from-terraform` copies them across.

output "route53" {
  description = "The policy's providers.route53 entry (owner included)."
  value       = { hosted_zone_id = local.zone_id, owner = var.owner }
}

output "zone_name" {
  description = "The hosted zone's name; the services' dns_name lie in it."
  value       = local.zone_name
}

output "name_servers" {
  description = "The zone's name servers, for the delegation at the parent."
  value       = var.zone_id == null ? aws_route53_zone.this[0].name_servers : data.aws_route53_zone.existing[0].name_servers
}

output "buckets" {
  description = "Each policy region's bucket (regions[].bucket), keyed by region name."
  value       = var.buckets
}

output "global_accelerator" {
  description = "The policy's providers.global_accelerator listener_arn and endpoint_groups (region name -> AWS Region); null without an accelerator."
  value = var.accelerator == null ? null : {
    listener_arn    = local.listener_arn
    endpoint_groups = { for k, g in var.accelerator.endpoint_groups : k => g.aws_region }
  }
}

output "endpoint_group_arns" {
  description = "Each policy region's endpoint group ARN."
  value       = local.endpoint_group_arns
}

output "role_arn" {
  description = "The role the control plane assumes."
  value       = aws_iam_role.control_plane.arn
}
