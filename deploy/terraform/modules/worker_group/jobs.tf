# Jobs without a Redis: one bucket holds the job records and results
# (results/, the s3:// result store: conditional writes) and the claim check's
# payloads (payloads/: requests and replies too large for a broker message).
# Encrypted with the fleet key, public access blocked, plain HTTP refused, and
# every object expired after jobs_retention_days (longer than any job's TTL,
# a day by default). The workers get FLEET_RESULTS and FLEET_PAYLOADS; clients
# use the same URLs (outputs jobs_results_url, jobs_payloads_url) with the
# permissions output jobs_client_policy_json grants.

locals {
  jobs_bucket       = var.jobs ? aws_s3_bucket.jobs[0].bucket : null
  jobs_bucket_arn   = "arn:${local.partition}:s3:::${coalesce(local.jobs_bucket, "none")}"
  jobs_results_url  = var.jobs ? "s3://${local.jobs_bucket}/results" : null
  jobs_payloads_url = var.jobs ? "s3://${local.jobs_bucket}/payloads" : null
  jobs_env = var.jobs ? merge(
    { FLEET_RESULTS = local.jobs_results_url, FLEET_PAYLOADS = local.jobs_payloads_url },
    var.job_notify == null ? {} : { FLEET_NOTIFY = var.job_notify },
  ) : {}
}

resource "aws_s3_bucket" "jobs" {
  count = var.jobs ? 1 : 0

  bucket = "${var.name}-jobs-${local.account_id}-${local.region}"
  # Results and payloads live for days at most: destroy removes them too.
  force_destroy = true
}

resource "aws_s3_bucket_ownership_controls" "jobs" {
  count = var.jobs ? 1 : 0

  bucket = aws_s3_bucket.jobs[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "jobs" {
  count = var.jobs ? 1 : 0

  bucket                  = aws_s3_bucket.jobs[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "jobs" {
  count = var.jobs ? 1 : 0

  bucket = aws_s3_bucket.jobs[0].id
  rule {
    bucket_key_enabled = true
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "jobs" {
  count = var.jobs ? 1 : 0

  bucket = aws_s3_bucket.jobs[0].id
  rule {
    id     = "expire-jobs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.jobs_retention_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "jobs_bucket" {
  statement {
    sid       = "DenyPlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.jobs_bucket_arn, "${local.jobs_bucket_arn}/*"]
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

resource "aws_s3_bucket_policy" "jobs" {
  count = var.jobs ? 1 : 0

  bucket = aws_s3_bucket.jobs[0].id
  policy = data.aws_iam_policy_document.jobs_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.jobs]
}

# What a worker and a client both need: read, write and delete the two
# prefixes; list the bucket (without it S3 answers a missing key with 403,
# not 404, and an unknown job could not be told from a refusal); the fleet key
# through S3 only.
data "aws_iam_policy_document" "jobs_access" {
  statement {
    sid       = "ListJobsBucket"
    actions   = ["s3:ListBucket"]
    resources = [local.jobs_bucket_arn]
  }

  statement {
    sid       = "ReadWriteJobs"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.jobs_bucket_arn}/results/*", "${local.jobs_bucket_arn}/payloads/*"]
  }

  statement {
    sid       = "JobObjectsKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_service]
    }
  }
}

resource "aws_iam_role_policy" "worker_jobs" {
  count = var.jobs ? 1 : 0

  name   = "jobs"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.jobs_access.json
}
