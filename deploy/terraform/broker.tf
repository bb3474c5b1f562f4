# Optional managed broker, chosen with var.broker:
#   "external"  bring your own (var.broker_url); nothing is created here
#   "rabbitmq"  Amazon MQ for RabbitMQ, private, AMQPS on 5671, its management
#               API (queue statistics) over HTTPS on the console URL
#   "kafka"     Amazon MSK, private, encrypted at rest with the fleet key and
#               between brokers; clients per var.msk_client_broker
# Either way the URL (with credentials) reaches the instances only through
# SecureString parameters (config.tf).

locals {
  # Amazon MQ serves the RabbitMQ management API on its console URL (HTTPS on
  # 443), not on port 15672: the URL names it, so the autoscaler reads queue
  # statistics (unacked counts) from there.
  mq_management_url = var.broker != "rabbitmq" ? null : aws_mq_broker.this[0].instances[0].console_url
  mq_url = var.broker != "rabbitmq" ? null : format(
    "%s?management_url=%s",
    replace(
      aws_mq_broker.this[0].instances[0].endpoints[0],
      "amqps://",
      "amqps://${var.mq_username}:${aws_secretsmanager_secret_version.mq[0].secret_string}@",
    ),
    urlencode(local.mq_management_url),
  )
  # The fleet connects on TLS only when the cluster allows nothing else.
  msk_bootstrap = var.broker != "kafka" ? null : (
    var.msk_client_broker == "TLS" ? aws_msk_cluster.this[0].bootstrap_brokers_tls : aws_msk_cluster.this[0].bootstrap_brokers
  )
  msk_url = var.broker != "kafka" ? null : "kafka://${local.msk_bootstrap}"

  broker_endpoint = {
    external = null
    rabbitmq = var.broker == "rabbitmq" ? aws_mq_broker.this[0].instances[0].endpoints[0] : null
    kafka    = local.msk_bootstrap
  }[var.broker]
}

# ---------------------------------------------------------------------------
# Amazon MQ for RabbitMQ
# ---------------------------------------------------------------------------

# A new random password is drawn on every plan; the secret version keeps the
# first one (ignore_changes), and everything reads it from there.
data "aws_secretsmanager_random_password" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  password_length     = 32
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  name_prefix             = "${var.name}/rabbitmq-password-"
  description             = "${var.name}: password of the Amazon MQ user ${var.mq_username}"
  kms_key_id              = aws_kms_key.fleet.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  secret_id     = aws_secretsmanager_secret.mq[0].id
  secret_string = data.aws_secretsmanager_random_password.mq[0].random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# Amazon MQ writes the broker's general log to CloudWatch Logs under
# /aws/amazonmq/broker/...; it needs this resource policy to do so.
data "aws_iam_policy_document" "mq_logs" {
  statement {
    sid       = "AmazonMQWritesBrokerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/amazonmq/*"]
    principals {
      type        = "Service"
      identifiers = ["mq.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_cloudwatch_log_resource_policy" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  policy_name     = "${var.name}-amazonmq-logs"
  policy_document = data.aws_iam_policy_document.mq_logs.json
}

resource "aws_mq_broker" "this" {
  count = var.broker == "rabbitmq" ? 1 : 0

  broker_name                = "${var.name}-rabbitmq"
  engine_type                = "RabbitMQ"
  engine_version             = var.mq_engine_version
  host_instance_type         = var.mq_instance_type
  deployment_mode            = var.mq_deployment_mode
  publicly_accessible        = false
  subnet_ids                 = var.mq_deployment_mode == "SINGLE_INSTANCE" ? [local.private_subnet_ids[0]] : local.private_subnet_ids
  security_groups            = [aws_security_group.broker[0].id]
  auto_minor_version_upgrade = true

  logs {
    general = true
  }

  user {
    username = var.mq_username
    password = aws_secretsmanager_secret_version.mq[0].secret_string
  }

  depends_on = [aws_cloudwatch_log_resource_policy.mq]

  lifecycle {
    # Amazon MQ cannot change a RabbitMQ user in place: a changed user block
    # would replace the broker. The password is rotated by hand (README).
    ignore_changes = [user]
  }
}

# ---------------------------------------------------------------------------
# Amazon MSK
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "msk" {
  count = var.broker == "kafka" ? 1 : 0

  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.fleet.arn
}

resource "aws_msk_cluster" "this" {
  count = var.broker == "kafka" ? 1 : 0

  cluster_name           = "${var.name}-kafka"
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = coalesce(var.msk_broker_nodes, length(local.private_subnet_ids))

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = local.private_subnet_ids
    security_groups = [aws_security_group.broker[0].id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_volume_size_gb
      }
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.fleet.arn

    encryption_in_transit {
      client_broker = var.msk_client_broker
      in_cluster    = true
    }
  }

  # Reachable only from the workers' and the autoscaler's security groups and
  # the producers of broker_client_cidrs / broker_client_security_group_ids.
  client_authentication {
    unauthenticated = true
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk[0].name
      }
    }
  }

  lifecycle {
    precondition {
      condition     = coalesce(var.msk_broker_nodes, length(local.private_subnet_ids)) % length(local.private_subnet_ids) == 0
      error_message = "msk_broker_nodes must be a multiple of the number of private subnets."
    }
  }
}
