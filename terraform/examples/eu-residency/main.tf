# EU residency: three EU regions, eu-west (AWS eu-west-1), eu-central (AWS eu-central-1) and eu-nl (GCP
# europe-west4), each storing model weights only inside the EU. policies/examples/eu-residency.yaml is the
# matching policy (its EU clients never leave the EU, even failing closed); `controlplane policy
# from-terraform` fills its zone and buckets from `terraform output -json`.

locals {
  aws_regions = { eu-west = "eu-west-1", eu-central = "eu-central-1" }
  # GCS regions inside the EU: the gcp module refuses a bucket anywhere else.
  eu_gcs_locations = [
    "europe-central2", "europe-north1", "europe-southwest1", "europe-west1", "europe-west3", "europe-west4",
    "europe-west8", "europe-west9", "europe-west10", "europe-west12",
  ]
}

module "bucket_eu_west" {
  source        = "../../modules/aws/bucket"
  providers     = { aws = aws.eu_west }
  name          = "${var.name}-weights-${local.aws_regions["eu-west"]}"
  force_destroy = var.force_destroy
}

module "bucket_eu_central" {
  source        = "../../modules/aws/bucket"
  providers     = { aws = aws.eu_central }
  name          = "${var.name}-weights-${local.aws_regions["eu-central"]}"
  force_destroy = var.force_destroy
}

module "aws" {
  source                 = "../../modules/aws"
  name                   = var.name
  zone_name              = var.zone_name
  owner                  = var.owner
  service_dns_names      = ["chat.${var.zone_name}"]
  trusted_principal_arns = var.trusted_principal_arns
  buckets = {
    eu-west    = module.bucket_eu_west.url
    eu-central = module.bucket_eu_central.url
  }
}

module "gcp" {
  source            = "../../modules/gcp"
  project           = var.gcp_project
  name              = var.name
  owner             = var.owner
  buckets           = { eu-nl = { location = "europe-west4" } }
  allowed_locations = local.eu_gcs_locations
  force_destroy     = var.force_destroy
}
