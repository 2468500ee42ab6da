# Named as the policy YAML names them: `controlplane policy from-terraform` copies them across.

output "cloud_dns" {
  description = "The policy's providers.cloud_dns entry (owner included); null without a zone."
  value = var.dns_name == null ? null : {
    project      = var.project
    managed_zone = google_dns_managed_zone.this[0].name
    owner        = var.owner
  }
}

output "buckets" {
  description = "Each policy region's bucket (regions[].bucket), keyed by region name."
  value       = { for k, b in google_storage_bucket.weights : k => "gs://${b.name}/${var.prefix}" }
}

output "name_servers" {
  description = "The zone's name servers, for the delegation at the parent; empty without a zone."
  value       = var.dns_name == null ? [] : google_dns_managed_zone.this[0].name_servers
}

output "service_account_email" {
  description = "The identity the control plane runs as (workload identity or a key the team manages)."
  value       = google_service_account.plane.email
}
