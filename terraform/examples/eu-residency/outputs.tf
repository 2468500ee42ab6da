output "route53" {
  description = "providers.route53 of the policy."
  value       = module.aws.route53
}

output "buckets" {
  description = "regions[].bucket of the policy, by region name: S3 for the AWS regions, GCS for eu-nl."
  value       = merge(module.aws.buckets, module.gcp.buckets)
}

output "name_servers" {
  description = "Delegate the zone to these at its parent."
  value       = module.aws.name_servers
}

output "role_arn" {
  description = "The AWS role the control plane assumes."
  value       = module.aws.role_arn
}

output "service_account_email" {
  description = "The GCP identity the control plane uses for the eu-nl bucket."
  value       = module.gcp.service_account_email
}
