# The workers' instance role. Every Auto Scaling action is named (no
# wildcards) and limited to the worker group's ARN.
#
# worker: read its own SSM parameters; complete (and heartbeat) lifecycle
#         actions on the worker group; read the model prefix of the model
#         bucket; write its log group; pull its image from ECR; with MSK and
#         IAM access control, consume the models' topics and write replies,
#         heartbeats and dead letters (worker_kafka: the broker module's
#         document); with jobs, the jobs bucket (jobs.tf).

locals {
  parameter_arn_prefix = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter"
  models_prefix_clean  = trim(var.models_prefix, "/")
  ssm_service          = "ssm.${local.region}.amazonaws.com"
  s3_service           = "s3.${local.region}.amazonaws.com"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name_prefix        = "${var.name}-worker-"
  description        = "${var.name} GPU worker instances"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "worker" {
  name_prefix = "${var.name}-worker-"
  role        = aws_iam_role.worker.name
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid     = "ReadOwnParameters"
    actions = ["ssm:GetParametersByPath", "ssm:GetParameters", "ssm:GetParameter"]
    resources = [
      "${local.parameter_arn_prefix}${local.worker_parameter_path}",
      "${local.parameter_arn_prefix}${local.worker_parameter_path}/*",
      "${local.parameter_arn_prefix}${local.worker_file_parameter_path}",
      "${local.parameter_arn_prefix}${local.worker_file_parameter_path}/*",
    ]
  }

  statement {
    sid       = "DecryptOwnParameters"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.ssm_service]
    }
  }

  statement {
    sid = "CompleteLifecycleActionsOnOwnGroup"
    actions = [
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    resources = [local.worker_group_arn]
  }

  statement {
    sid       = "ListModelPrefix"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.models_bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.models_prefix_clean, "${local.models_prefix_clean}/*"]
    }
  }

  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["arn:${local.partition}:s3:::${local.models_bucket}/${local.models_prefix_clean}/*"]
  }

  dynamic "statement" {
    for_each = local.models_kms_key_arn == null ? [] : [local.models_kms_key_arn]
    content {
      sid       = "DecryptModels"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_service]
      }
    }
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker.arn}:*"]
  }

  dynamic "statement" {
    for_each = length(var.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "EcrLogin"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource-level permissions
    }
  }

  dynamic "statement" {
    for_each = length(var.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "PullImages"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = var.ecr_pull_arns
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy_attachment" "worker_ssm_core" {
  count = var.enable_ssm_session_manager ? 1 : 0

  role       = aws_iam_role.worker.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# With MSK and IAM access control: the broker module's worker document.
resource "aws_iam_role_policy" "worker_kafka" {
  count = var.kafka_iam ? 1 : 0

  name   = "worker-kafka"
  role   = aws_iam_role.worker.id
  policy = var.kafka_policy_json
}
