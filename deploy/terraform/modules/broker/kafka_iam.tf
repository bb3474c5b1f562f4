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
# The documents are outputs: the worker_group and autoscaler modules attach
# the first two to their roles (worker-kafka, autoscaler-kafka).

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
