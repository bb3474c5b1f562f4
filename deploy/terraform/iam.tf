# Instance roles. Every Auto Scaling action is named (no wildcards) and, where
# the API allows it, limited to the worker group's ARN.
#
# worker:     read its own SSM parameters; complete (and heartbeat) lifecycle
#             actions on the worker group; read the model prefix of the model
#             bucket; write its log group; pull its image from ECR; with MSK
#             and IAM access control, consume the models' topics and write
#             replies, heartbeats and dead letters (worker_kafka).
# autoscaler: read its own SSM parameters; describe Auto Scaling groups; set
#             the worker group's desired capacity and instance protection; put
#             CloudWatch metrics in metrics_namespace only (when set); write its
#             log group; pull its image from ECR; with MSK and IAM access
#             control, declare the models' topics, read their lag and the
#             heartbeats (autoscaler_kafka).

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

# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------

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
    resources = [aws_kms_key.fleet.arn]
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
    for_each = length(local.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "EcrLogin"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource-level permissions
    }
  }

  dynamic "statement" {
    for_each = length(local.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "PullImages"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = local.ecr_pull_arns
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

# ---------------------------------------------------------------------------
# Autoscaler
# ---------------------------------------------------------------------------

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
    resources = [aws_kms_key.fleet.arn]
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
    sid = "SetCapacityOfWorkerGroupOnly"
    actions = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:SetInstanceProtection",
    ]
    resources = [local.worker_group_arn]
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
    for_each = length(local.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "EcrLogin"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource-level permissions
    }
  }

  dynamic "statement" {
    for_each = length(local.ecr_pull_arns) > 0 ? [1] : []
    content {
      sid       = "PullImages"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = local.ecr_pull_arns
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

# ---------------------------------------------------------------------------
# Amazon MSK with IAM access control (broker = "kafka", msk_auth = "iam")
# ---------------------------------------------------------------------------
# kafka-cluster actions on this cluster, and on the fleet's topics and groups by
# name only (fleet/transport/base.py, fleet/transport/kafka.py):
#   fleet.<model>.<online|batch>  a model's request topics; each one's consumer
#                                 group has the topic's name
#   fleet.dead-letter             dead letters (the workers write them; workers
#                                 with a result store read them in the group
#                                 fleet.dead-letter.jobs, to end dead jobs failed)
#   <job_notify>                  finished jobs' notifications (the workers write them)
#   fleet.heartbeats              the workers' heartbeats (the autoscaler reads them)
#   fleet.replies                 the clients' shared reply topic (inbox=shared):
#                                 the workers write replies, a client reads its partition
#   fleet.inbox.<32 hex>          a client's own reply topic (inbox=topic)
# Every Kafka transport creates the dead-letter, heartbeat and shared reply
# topics on connect (CreateTopic on an existing topic answers "already
# exists"), and its idempotent producer asks for a producer id at start
# (WriteDataIdempotently). Only a client deletes a topic (its own inbox
# topic, on close): neither role may.
# Topic and group ARNs are the cluster's with :topic/ or :group/ for :cluster/
# and the name appended: arn:...:topic/<cluster name>/<cluster uuid>/<topic>.

locals {
  msk_iam = var.broker == "kafka" && var.msk_auth == "iam"

  kafka_priorities      = ["online", "batch"]
  kafka_model_topics    = flatten([for m in var.models : [for p in local.kafka_priorities : "fleet.${m}.${p}"]])
  kafka_dead_letter     = "fleet.dead-letter"
  kafka_dead_letter_tap = "fleet.dead-letter.jobs"
  kafka_heartbeats      = "fleet.heartbeats"
  kafka_replies         = "fleet.replies"
  kafka_inbox_wildcard  = "fleet.inbox.*"

  msk_cluster_arn = local.msk_iam ? aws_msk_cluster.this[0].arn : ""
  msk_topic_arn   = "${replace(local.msk_cluster_arn, ":cluster/", ":topic/")}/"
  msk_group_arn   = "${replace(local.msk_cluster_arn, ":cluster/", ":group/")}/"

  kafka_model_topic_arns = [for t in local.kafka_model_topics : "${local.msk_topic_arn}${t}"]
  kafka_model_group_arns = [for t in local.kafka_model_topics : "${local.msk_group_arn}${t}"]
}

data "aws_iam_policy_document" "worker_kafka" {
  count = local.msk_iam ? 1 : 0

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [local.msk_cluster_arn]
  }

  # consume (creates the topic it reads), and republish a delivery for another attempt
  statement {
    sid       = "KafkaConsumeModelTopics"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData", "kafka-cluster:WriteData"]
    resources = local.kafka_model_topic_arns
  }

  statement {
    sid       = "KafkaJoinModelGroups"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = local.kafka_model_group_arns
  }

  statement {
    sid     = "KafkaWriteHeartbeatsDeadLettersAndReplies"
    actions = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = [
      "${local.msk_topic_arn}${local.kafka_dead_letter}",
      "${local.msk_topic_arn}${local.kafka_heartbeats}",
      "${local.msk_topic_arn}${local.kafka_replies}",
    ]
  }

  statement {
    sid       = "KafkaWriteRepliesToInboxTopics"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = ["${local.msk_topic_arn}${local.kafka_inbox_wildcard}"]
  }

  statement {
    sid       = "KafkaTapDeadLetters"
    actions   = ["kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}${local.kafka_dead_letter}"]
  }

  statement {
    sid       = "KafkaJoinDeadLetterTapGroup"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.msk_group_arn}${local.kafka_dead_letter_tap}"]
  }

  dynamic "statement" {
    for_each = var.job_notify == null ? [] : [var.job_notify]
    content {
      sid       = "KafkaWriteJobNotifications"
      actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
      resources = ["${local.msk_topic_arn}${statement.value}"]
    }
  }
}

resource "aws_iam_role_policy" "worker_kafka" {
  count = local.msk_iam ? 1 : 0

  name   = "worker-kafka"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker_kafka[0].json
}

data "aws_iam_policy_document" "autoscaler_kafka" {
  count = local.msk_iam ? 1 : 0

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [local.msk_cluster_arn]
  }

  # declare_model creates them; depth and produce_rate read their offsets
  statement {
    sid       = "KafkaDeclareModelTopics"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
    resources = local.kafka_model_topic_arns
  }

  # the workers' committed offsets (lag) and members
  statement {
    sid       = "KafkaDescribeModelGroups"
    actions   = ["kafka-cluster:DescribeGroup"]
    resources = local.kafka_model_group_arns
  }

  # read without a consumer group
  statement {
    sid       = "KafkaReadHeartbeats"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}${local.kafka_heartbeats}"]
  }

  statement {
    sid     = "KafkaDeclareDeadLettersAndReplies"
    actions = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
    resources = [
      "${local.msk_topic_arn}${local.kafka_dead_letter}",
      "${local.msk_topic_arn}${local.kafka_replies}",
    ]
  }
}

resource "aws_iam_role_policy" "autoscaler_kafka" {
  count = local.msk_iam ? 1 : 0

  name   = "autoscaler-kafka"
  role   = aws_iam_role.autoscaler.id
  policy = data.aws_iam_policy_document.autoscaler_kafka[0].json
}

# What a producer's role needs (output kafka_producer_policy_json): publish
# requests and read their topics' lag (backpressure), read its partition of the
# shared reply topic, or (inbox=topic) create, read and delete its own one.
data "aws_iam_policy_document" "producer_kafka" {
  count = local.msk_iam ? 1 : 0

  statement {
    sid       = "KafkaConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
    resources = [local.msk_cluster_arn]
  }

  statement {
    sid       = "KafkaPublishRequests"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = local.kafka_model_topic_arns
  }

  statement {
    sid       = "KafkaDescribeModelGroups"
    actions   = ["kafka-cluster:DescribeGroup"]
    resources = local.kafka_model_group_arns
  }

  statement {
    sid     = "KafkaDeclareHeartbeatsAndDeadLetters"
    actions = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
    resources = [
      "${local.msk_topic_arn}${local.kafka_dead_letter}",
      "${local.msk_topic_arn}${local.kafka_heartbeats}",
    ]
  }

  statement {
    sid       = "KafkaReadSharedReplies"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.msk_topic_arn}${local.kafka_replies}"]
  }

  statement {
    sid       = "KafkaOwnReplyTopics"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData", "kafka-cluster:DeleteTopic"]
    resources = ["${local.msk_topic_arn}${local.kafka_inbox_wildcard}"]
  }
}
