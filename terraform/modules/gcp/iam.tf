# Least privilege (docs/providers/clouddns.md, docs/weights.md): custom roles holding exactly what the plane
# calls, granted on the zone and on each bucket, never on the project. roles/dns.admin would also let it
# create and delete zones and change DNSSEC; roles/storage.objectAdmin object ACLs and retention.

locals {
  member = "serviceAccount:${google_service_account.plane.email}"
}

resource "google_project_iam_custom_role" "dns_records" {
  count       = var.dns_name == null ? 0 : 1
  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_plane_dns"
  title       = "LLM failover plane: the zone's records"
  description = "Read the managed zone and change its record sets; no zone, DNSSEC or policy changes."
  permissions = [
    "dns.managedZones.get",
    "dns.resourceRecordSets.list",
    "dns.resourceRecordSets.create",
    "dns.resourceRecordSets.update",
    "dns.resourceRecordSets.delete",
    "dns.changes.create",
    "dns.changes.get",
  ]
}

resource "google_dns_managed_zone_iam_member" "plane" {
  count        = var.dns_name == null ? 0 : 1
  project      = var.project
  managed_zone = google_dns_managed_zone.this[0].name
  role         = google_project_iam_custom_role.dns_records[0].id
  member       = local.member
}

resource "google_project_iam_custom_role" "weights" {
  project     = var.project
  role_id     = "${replace(var.name, "-", "_")}_plane_weights"
  title       = "LLM failover plane: model weights"
  description = "List, read, write and delete objects: what sync, verify, promote and retention need."
  permissions = [
    "storage.objects.list",
    "storage.objects.get",
    "storage.objects.create",
    "storage.objects.delete",
  ]
}

resource "google_storage_bucket_iam_member" "weights" {
  for_each = google_storage_bucket.weights
  bucket   = each.value.name
  role     = google_project_iam_custom_role.weights.id
  member   = local.member
}

resource "google_storage_bucket_iam_member" "sources" {
  for_each = toset(var.source_buckets)
  bucket   = each.value
  role     = "roles/storage.objectViewer"
  member   = local.member
}
