# The control plane's identity: it may change only its own zone's records, its own accelerator's endpoint
# groups and its own buckets (docs/providers/*.md, docs/weights.md).

locals {
  # s3://BUCKET/PREFIX -> {bucket, prefix}
  region_buckets = { for k, u in var.buckets : k => regex("^s3://(?P<bucket>[^/]+)/(?P<prefix>.+)$", u) }
  source_buckets = [for u in var.source_buckets : regex("^s3://(?P<bucket>[^/]+)/(?P<prefix>.+)$", u)]
  # A service's name, its ownership marker and this owner's weighted sets below it (providers/route53.py).
  record_names        = flatten([for n in var.service_dns_names : [n, "_cp.${n}", "*.${var.owner}._cp.${n}"]])
  endpoint_group_arns = { for k, g in aws_globalaccelerator_endpoint_group.this : k => g.id }
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = var.trusted_principal_arns
    }
  }
}

data "aws_iam_policy_document" "control_plane" {
  statement {
    sid       = "Route53ReadZone"
    actions   = ["route53:GetHostedZone", "route53:ListResourceRecordSets"]
    resources = ["arn:aws:route53:::hostedzone/${local.zone_id}"]
  }
  statement {
    sid       = "Route53WriteOwnNames"
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = ["arn:aws:route53:::hostedzone/${local.zone_id}"]
    condition {
      test     = "ForAllValues:StringLike"
      variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
      values   = local.record_names
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsRecordTypes"
      values   = ["A", "AAAA", "TXT"]
    }
  }
  statement {
    sid       = "Route53WaitForChanges"
    actions   = ["route53:GetChange"]
    resources = ["arn:aws:route53:::change/*"]
  }

  dynamic "statement" {
    for_each = local.listener_arn == null ? [] : [local.listener_arn]
    content {
      sid       = "AcceleratorListGroups"
      actions   = ["globalaccelerator:ListEndpointGroups"]
      resources = [statement.value]
    }
  }
  dynamic "statement" {
    # Only the groups this module made: a foreign group on the listener stays out of reach.
    for_each = length(local.endpoint_group_arns) == 0 ? [] : [values(local.endpoint_group_arns)]
    content {
      sid       = "AcceleratorTurnOwnGroups"
      actions   = ["globalaccelerator:UpdateEndpointGroup"]
      resources = statement.value
    }
  }

  dynamic "statement" {
    for_each = local.region_buckets
    content {
      sid       = "WeightsList${replace(title(replace(statement.key, "-", " ")), " ", "")}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:aws:s3:::${statement.value.bucket}"]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [statement.value.prefix, "${statement.value.prefix}/*"]
      }
    }
  }
  statement {
    sid       = "WeightsUploads"
    actions   = ["s3:ListBucketMultipartUploads"]
    resources = distinct([for b in values(local.region_buckets) : "arn:aws:s3:::${b.bucket}"])
  }
  statement {
    sid = "WeightsReadWrite"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:ListMultipartUploadParts",
      "s3:AbortMultipartUpload",
    ]
    resources = [for b in values(local.region_buckets) : "arn:aws:s3:::${b.bucket}/${b.prefix}/*"]
  }

  dynamic "statement" {
    for_each = length(local.source_buckets) == 0 ? [] : [local.source_buckets]
    content {
      sid       = "SourcesRead"
      actions   = ["s3:GetObject"]
      resources = [for b in statement.value : "arn:aws:s3:::${b.bucket}/${b.prefix}/*"]
    }
  }
  dynamic "statement" {
    for_each = { for i, b in local.source_buckets : i => b }
    content {
      sid       = "SourcesList${statement.key}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:aws:s3:::${statement.value.bucket}"]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [statement.value.prefix, "${statement.value.prefix}/*"]
      }
    }
  }
}

resource "aws_iam_role" "control_plane" {
  name                 = "${var.name}-control-plane"
  description          = "The LLM failover control plane: its zone's records, its accelerator's groups, its weight buckets."
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

resource "aws_iam_role_policy" "control_plane" {
  name   = "control-plane"
  role   = aws_iam_role.control_plane.id
  policy = data.aws_iam_policy_document.control_plane.json
}
