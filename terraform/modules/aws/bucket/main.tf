# One Region's bucket for model weights, as the control plane's sync expects it (docs/weights.md).

data "aws_region" "current" {}

resource "aws_s3_bucket" "weights" {
  #checkov:skip=CKV_AWS_144:Cross-region replication would copy weights into Regions the policy may forbid (residency); the plane's sync copies only where a model may go.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events: the plane reads CURRENT on its own schedule.
  #checkov:skip=CKV_AWS_18:Access logging is optional (var.access_log_bucket): the log bucket is the team's own, and a bucket cannot log into itself.
  bucket        = var.name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_versioning" "weights" {
  bucket = aws_s3_bucket.weights.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "weights" {
  bucket = aws_s3_bucket.weights.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "weights" {
  bucket                  = aws_s3_bucket.weights.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "weights" {
  bucket = aws_s3_bucket.weights.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Old versions expire under the plane's prefix only: whatever else a team keeps in the bucket keeps its
# own rules.
resource "aws_s3_bucket_lifecycle_configuration" "weights" {
  bucket = aws_s3_bucket.weights.id
  # Versioning must be on before a noncurrent-version rule means anything.
  depends_on = [aws_s3_bucket_versioning.weights]

  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {
      prefix = "${var.prefix}/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "abort-abandoned-uploads"
    status = "Enabled"
    # Bucket-wide: an upload abandoned anywhere is storage paid for and never readable.
    filter {
      prefix = ""
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_upload_days
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid       = "DenyPlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.weights.arn, "${aws_s3_bucket.weights.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "weights" {
  bucket = aws_s3_bucket.weights.id
  policy = data.aws_iam_policy_document.tls_only.json
  # S3 refuses a policy while the public access block is being written.
  depends_on = [aws_s3_bucket_public_access_block.weights]
}

resource "aws_s3_bucket_logging" "weights" {
  count         = var.access_log_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.weights.id
  target_bucket = var.access_log_bucket
  target_prefix = "logs/${var.name}/"
}
