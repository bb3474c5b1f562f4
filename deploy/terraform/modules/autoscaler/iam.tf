# The autoscaler's instance role. Every Auto Scaling action is named (no
# wildcards) and, where the API allows it, limited to the worker group's ARN.
#
# autoscaler: read its own SSM parameters; describe Auto Scaling groups; set
#             the worker group's desired capacity and instance protection; put
#             CloudWatch metrics in metrics_namespace only (when set); write its
#             log group; pull its image from ECR; with MSK and IAM access
#             control, declare the models' topics, read their lag and the
#             heartbeats (autoscaler_kafka: the broker module's document).

locals {
  parameter_arn_prefix = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter"
  ssm_service          = "ssm.${local.region}.amazonaws.com"
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

resource "aws_iam_role" "autoscaler" {
  name_prefix        = "${var.name}-autoscaler-"
  description        = "${var.name} autoscaler instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "autoscaler" {
  name_prefix = "${var.name}-autoscaler-"
  role        = aws_iam_role.autoscaler.name
}

data "aws_iam_policy_document" "autoscaler" {
  statement {
    sid     = "ReadOwnParameters"
    actions = ["ssm:GetParametersByPath", "ssm:GetParameters", "ssm:GetParameter"]
    resources = [
      "${local.parameter_arn_prefix}${local.autoscaler_parameter_path}",
      "${local.parameter_arn_prefix}${local.autoscaler_parameter_path}/*",
      "${local.parameter_arn_prefix}${local.autoscaler_file_parameter_path}",
      "${local.parameter_arn_prefix}${local.autoscaler_file_parameter_path}/*",
      "${local.parameter_arn_prefix}${local.autoscaler_config_name}",
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
    sid = "DescribeGroups"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeWarmPool",
    ]
    resources = ["*"] # Describe actions have no resource-level permissions
  }

  statement {
    sid       = "KeepOwnPolicyState"
    actions   = ["ssm:GetParameter", "ssm:PutParameter"]
    resources = ["${local.parameter_arn_prefix}${local.policy_state_name}"]
  }

  dynamic "statement" {
    for_each = var.autoscaler_warm_pool == null ? [] : [1]
    content {
      sid       = "SizeWorkerWarmPool"
      actions   = ["autoscaling:PutWarmPool"]
      resources = [var.worker_group_arn]
    }
  }

  statement {
    sid = "SetCapacityOfWorkerGroupOnly"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:SetInstanceProtection",
    ]
    resources = [var.worker_group_arn]
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.autoscaler.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.metrics_namespace == null ? [] : [var.metrics_namespace]
    content {
      sid       = "PutMetricsInOwnNamespace"
      actions   = ["cloudwatch:PutMetricData"]
      resources = ["*"] # PutMetricData has no resource-level permissions
      condition {
        test     = "StringEquals"
        variable = "cloudwatch:namespace"
        values   = [statement.value]
      }
    }
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

resource "aws_iam_role_policy" "autoscaler" {
  name   = "autoscaler"
  role   = aws_iam_role.autoscaler.id
  policy = data.aws_iam_policy_document.autoscaler.json
}

resource "aws_iam_role_policy_attachment" "autoscaler_ssm_core" {
  count = var.enable_ssm_session_manager ? 1 : 0

  role       = aws_iam_role.autoscaler.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

# With MSK and IAM access control: the broker module's autoscaler document.
resource "aws_iam_role_policy" "autoscaler_kafka" {
  count = var.kafka_iam ? 1 : 0

  name   = "autoscaler-kafka"
  role   = aws_iam_role.autoscaler.id
  policy = var.kafka_policy_json
}
