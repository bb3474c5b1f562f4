# Optional managed broker, chosen with var.broker:
#   "external"  bring your own (var.broker_url); nothing is created here
#   "rabbitmq"  Amazon MQ for RabbitMQ, private, AMQPS on 5671 only, its
#               management API (queue statistics) over HTTPS on the console URL;
#               the fleet connects as broker_username, an application user the
#               administrator creates (README), never as the administrator
#   "kafka"     Amazon MSK, private, encrypted at rest with the fleet key and
#               between brokers; clients per var.msk_auth (default: TLS and IAM)
# The URL reaches the instances only through SecureString parameters, and a
# password never is in it: it is a file parameter of its own (the worker_group
# and autoscaler modules).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # The URL the workers and the autoscaler are given (FLEET_BROKER_URL).
  broker_url = {
    external = var.broker_url
    rabbitmq = local.mq_url
    kafka    = local.msk_url
  }[var.broker]

  # Amazon MQ for RabbitMQ serves AMQP over TLS only, on 5671.
  mq_host = var.broker != "rabbitmq" ? null : regex("^amqps://([^:/]+)", aws_mq_broker.this[0].instances[0].endpoints[0])[0]
  # Amazon MQ serves the RabbitMQ management API on its console URL (HTTPS on
  # 443), not on port 15672: the URL names it, so the autoscaler reads queue
  # statistics (unacked counts) from there, as the same user.
  mq_management_url = var.broker != "rabbitmq" ? null : aws_mq_broker.this[0].instances[0].console_url
  mq_url = var.broker != "rabbitmq" ? null : format(
    "amqps://%s@%s:5671?management_url=%s", var.broker_username, local.mq_host, urlencode(local.mq_management_url),
  )

  # What each MSK client authentication gives: the port (and bootstrap string)
  # the fleet connects to, and the URL's scheme and query (the Kafka
  # transport's contract). Every one but plaintext is TLS between clients and
  # brokers.
  msk_modes = {
    iam = {
      port   = 9098
      scheme = "kafka+sasl+ssl"
      user   = ""
      query  = "/?sasl_mechanism=AWS_MSK_IAM&aws_region=${local.region}"
    }
    scram = {
      port   = 9096
      scheme = "kafka+sasl+ssl"
      user   = "${var.broker_username}@"
      query  = "/?sasl_mechanism=SCRAM-SHA-512"
    }
    tls = {
      port   = 9094
      scheme = "kafka+ssl"
      user   = ""
      query  = ""
    }
    plaintext = {
      port   = 9092
      scheme = "kafka"
      user   = ""
      query  = ""
    }
  }
  msk_mode = local.msk_modes[var.msk_auth]
  msk_bootstrap = var.broker != "kafka" ? null : {
    iam       = aws_msk_cluster.this[0].bootstrap_brokers_sasl_iam
    scram     = aws_msk_cluster.this[0].bootstrap_brokers_sasl_scram
    tls       = aws_msk_cluster.this[0].bootstrap_brokers_tls
    plaintext = aws_msk_cluster.this[0].bootstrap_brokers
  }[var.msk_auth]
  msk_url   = var.broker != "kafka" ? null : "${local.msk_mode.scheme}://${local.msk_mode.user}${local.msk_bootstrap}${local.msk_mode.query}"
  msk_scram = var.broker == "kafka" && var.msk_auth == "scram"

  broker_endpoint = {
    external = null
    rabbitmq = var.broker == "rabbitmq" ? "amqps://${local.mq_host}:5671" : null
    kafka    = local.msk_bootstrap
  }[var.broker]

  # The password of broker_username, given to the instances as a file
  # (FLEET_BROKER_PASSWORD_FILE): Amazon MQ's application user, MSK's SCRAM user.
  broker_password_file = var.broker == "rabbitmq" || local.msk_scram
  broker_password = (
    var.broker == "rabbitmq" ? aws_secretsmanager_secret_version.mq_fleet[0].secret_string :
    local.msk_scram ? jsondecode(aws_secretsmanager_secret_version.msk_scram[0].secret_string).password :
    null
  )
  broker_password_secret_arn = (
    var.broker == "rabbitmq" ? aws_secretsmanager_secret.mq_fleet[0].arn :
    local.msk_scram ? aws_secretsmanager_secret.msk_scram[0].arn :
    null
  )
}

# ---------------------------------------------------------------------------
# Amazon MQ for RabbitMQ
# ---------------------------------------------------------------------------

# A new random password is drawn on every plan; the secret versions keep the
# first one (ignore_changes), and everything reads it from there.
data "aws_secretsmanager_random_password" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  password_length     = 32
  exclude_punctuation = true
}

data "aws_secretsmanager_random_password" "mq_fleet" {
  count = var.broker == "rabbitmq" ? 1 : 0

  password_length     = 32
  exclude_punctuation = true
}

# The administrator: the one user Amazon MQ creates. Only an operator uses it,
# to create the fleet's user (README); it reaches no instance.
resource "aws_secretsmanager_secret" "mq" {
  count = var.broker == "rabbitmq" ? 1 : 0

  # The name it had when the fleet connected as the administrator: an existing
  # secret (and the broker's password in it) is kept, not replaced.
  name_prefix             = "${var.name}/rabbitmq-password-"
  description             = "${var.name}: password of the Amazon MQ administrator ${var.mq_admin_username}"
  kms_key_id              = var.kms_key_arn
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

# The fleet's application user (broker_username): the administrator creates it
# with this password, the fleet's permissions only and the management tag
# (README); the workers and the autoscaler read the password from a file.
resource "aws_secretsmanager_secret" "mq_fleet" {
  count = var.broker == "rabbitmq" ? 1 : 0

  name_prefix             = "${var.name}/rabbitmq-app-password-"
  description             = "${var.name}: password of the Amazon MQ application user ${var.broker_username}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "mq_fleet" {
  count = var.broker == "rabbitmq" ? 1 : 0

  secret_id     = aws_secretsmanager_secret.mq_fleet[0].id
  secret_string = data.aws_secretsmanager_random_password.mq_fleet[0].random_password

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
  subnet_ids                 = var.mq_deployment_mode == "SINGLE_INSTANCE" ? [var.private_subnet_ids[0]] : var.private_subnet_ids
  security_groups            = [aws_security_group.broker[0].id]
  auto_minor_version_upgrade = true

  logs {
    general = true
  }

  # Amazon MQ for RabbitMQ creates one user, an administrator; more users
  # are made in the management API (README: the fleet's user).
  user {
    username = var.mq_admin_username
    password = aws_secretsmanager_secret_version.mq[0].secret_string
  }

  depends_on = [aws_cloudwatch_log_resource_policy.mq]

  lifecycle {
    # Amazon MQ cannot change a RabbitMQ user in place: a changed user block
    # would replace the broker. The password is rotated by hand (README).
    ignore_changes = [user]

    precondition {
      condition     = var.broker_username != var.mq_admin_username
      error_message = "broker_username is the fleet's own user, not the administrator (mq_admin_username): give them different names."
    }

    postcondition {
      condition     = alltrue([for i in self.instances : length(i.endpoints) > 0 && alltrue([for e in i.endpoints : can(regex("^amqps://[^:/]+:5671$", e))])])
      error_message = "Amazon MQ for RabbitMQ is expected to serve AMQPS on 5671 only."
    }
  }
}

# ---------------------------------------------------------------------------
# Amazon MSK
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "msk" {
  count = var.broker == "kafka" ? 1 : 0

  name              = "/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_msk_cluster" "this" {
  count = var.broker == "kafka" ? 1 : 0

  cluster_name           = "${var.name}-kafka"
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = coalesce(var.msk_broker_nodes, length(var.private_subnet_ids))

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.private_subnet_ids
    security_groups = [aws_security_group.broker[0].id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_volume_size_gb
      }
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn

    encryption_in_transit {
      client_broker = var.msk_auth == "plaintext" ? "PLAINTEXT" : "TLS"
      in_cluster    = true
    }
  }

  # Reachable only from the workers' and the autoscaler's security groups and
  # the producers of broker_client_cidrs / broker_client_security_group_ids;
  # on top of that, by default, only with an IAM identity the cluster's
  # policies admit (iam.tf), or as the SCRAM user.
  client_authentication {
    unauthenticated = contains(["tls", "plaintext"], var.msk_auth)

    dynamic "sasl" {
      for_each = contains(["iam", "scram"], var.msk_auth) ? [var.msk_auth] : []
      content {
        iam   = sasl.value == "iam"
        scram = sasl.value == "scram"
      }
    }
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
      condition     = coalesce(var.msk_broker_nodes, length(var.private_subnet_ids)) % length(var.private_subnet_ids) == 0
      error_message = "msk_broker_nodes must be a multiple of the number of private subnets."
    }
  }
}

# SASL/SCRAM (msk_auth = "scram"): MSK reads the user's credentials from a
# Secrets Manager secret whose name starts with AmazonMSK_ and that is
# encrypted with a customer managed key (not the default aws/secretsmanager
# key, which MSK cannot use): the fleet key. Associating it attaches MSK's own
# resource policy to the secret, so none is managed here.
data "aws_secretsmanager_random_password" "msk_scram" {
  count = local.msk_scram ? 1 : 0

  password_length     = 32
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "msk_scram" {
  count = local.msk_scram ? 1 : 0

  name_prefix             = "AmazonMSK_${var.name}-${var.broker_username}-"
  description             = "${var.name}: SASL/SCRAM credentials of the MSK user ${var.broker_username}"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "msk_scram" {
  count = local.msk_scram ? 1 : 0

  secret_id = aws_secretsmanager_secret.msk_scram[0].id
  secret_string = jsonencode({
    username = var.broker_username
    password = data.aws_secretsmanager_random_password.msk_scram[0].random_password
  })

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_msk_scram_secret_association" "this" {
  count = local.msk_scram ? 1 : 0

  cluster_arn     = aws_msk_cluster.this[0].arn
  secret_arn_list = [aws_secretsmanager_secret.msk_scram[0].arn]

  depends_on = [aws_secretsmanager_secret_version.msk_scram]
}
