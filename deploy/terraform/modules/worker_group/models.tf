# The model repository: models_bucket when given, else a bucket created here,
# versioned (a model version overwritten by mistake can be restored), encrypted
# with the fleet key, with public access blocked and plain HTTP refused.
# `fleet models push --to <models_uri>` uploads the <model>/<version>/ directories
# under models_prefix; output models_uri is the workers' FLEET_MODELS.

locals {
  create_models_bucket = var.models_bucket == null
  models_bucket        = local.create_models_bucket ? aws_s3_bucket.models[0].bucket : var.models_bucket
  models_uri           = "s3://${local.models_bucket}/${trim(var.models_prefix, "/")}"
  # A created bucket is encrypted with the fleet key; a given one with models_kms_key_arn (if any).
  models_kms_key_arn = local.create_models_bucket ? var.kms_key_arn : var.models_kms_key_arn
}

resource "aws_s3_bucket" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = "${var.name}-models-${local.account_id}-${local.region}"
  # The models are copies of what a release built: destroy removes them too.
  force_destroy = true
}

resource "aws_s3_bucket_ownership_controls" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.models[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    bucket_key_enabled = true
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    id     = "expire-old-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "models_bucket" {
  statement {
    sid       = "DenyPlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = ["arn:${local.partition}:s3:::${local.models_bucket}", "arn:${local.partition}:s3:::${local.models_bucket}/*"]
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

resource "aws_s3_bucket_policy" "models" {
  count = local.create_models_bucket ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  policy = data.aws_iam_policy_document.models_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.models]
}
