# Two regions, active-active: us-east (us-east-1) and eu-west (eu-west-1) serve chat.ZONE together, each
# with its own weight bucket; policies/examples/two-region.yaml is the matching policy, and
# `controlplane policy from-terraform` fills it from `terraform output -json`.

locals {
  aws_regions = { us-east = "us-east-1", eu-west = "eu-west-1" }
}

module "bucket_us_east" {
  source        = "../../modules/aws/bucket"
  providers     = { aws = aws.us_east }
  name          = "${var.name}-weights-${local.aws_regions["us-east"]}"
  force_destroy = var.force_destroy
}

module "bucket_eu_west" {
  source        = "../../modules/aws/bucket"
  providers     = { aws = aws.eu_west }
  name          = "${var.name}-weights-${local.aws_regions["eu-west"]}"
  force_destroy = var.force_destroy
}

module "plane" {
  source                 = "../../modules/aws"
  name                   = var.name
  zone_name              = var.zone_name
  owner                  = var.owner
  service_dns_names      = ["chat.${var.zone_name}"]
  trusted_principal_arns = var.trusted_principal_arns
  force_destroy          = var.force_destroy
  buckets = {
    us-east = module.bucket_us_east.url
    eu-west = module.bucket_eu_west.url
  }
  accelerator = length(var.accelerator_endpoints) == 0 ? null : {
    endpoint_groups = {
      for k, endpoints in var.accelerator_endpoints : k => { aws_region = local.aws_regions[k], endpoints = endpoints }
    }
  }
}
