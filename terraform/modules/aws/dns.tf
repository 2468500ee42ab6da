resource "aws_route53_zone" "this" {
  #checkov:skip=CKV2_AWS_38:DNSSEC needs a KMS signing key in us-east-1 and a DS record at the parent zone, both the team's to own; the plane's records work signed or not.
  #checkov:skip=CKV2_AWS_39:Query logging needs a CloudWatch log group in us-east-1 with a resource policy; the plane's own audit log records every change it makes.
  count = var.zone_name == null ? 0 : 1
  name  = var.zone_name
  tags  = var.tags
  # The plane's records are not terraform's: without this a zone it wrote into cannot be destroyed.
  force_destroy = var.force_destroy
}

data "aws_route53_zone" "existing" {
  count   = var.zone_id == null ? 0 : 1
  zone_id = var.zone_id
}

locals {
  zone_id   = var.zone_id == null ? aws_route53_zone.this[0].zone_id : var.zone_id
  zone_name = trimsuffix(var.zone_id == null ? aws_route53_zone.this[0].name : data.aws_route53_zone.existing[0].name, ".")
}
