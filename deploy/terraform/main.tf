# The fleet on AWS: a GPU worker Auto Scaling Group fed from a broker, an
# autoscaler service that sets the group's desired capacity, and the network,
# load balancer, IAM and configuration they need.
#
#   network.tf          VPC and subnets (new, or an existing VPC)
#   security_groups.tf  one security group per role, only the ports in use
#   worker.tf           launch template, Auto Scaling Group, warm pool, lifecycle hooks
#   alb.tf              application load balancer and the worker target group
#   autoscaler.tf       the autoscaler as a group of one
#   broker.tf           optional managed broker (Amazon MQ for RabbitMQ, or MSK)
#   config.tf           SSM parameters read by the instances at boot
#   iam.tf              instance roles and their policies
#   images.tf           ECR repositories for the worker and CPU images
#   models.tf           the model repository's S3 bucket (unless given)
#   dashboard.tf        CloudWatch dashboard of the worker group and autoscaler

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  tags = merge({ Application = "fleet", Deployment = var.name }, var.tags)

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  worker_group_name     = "${var.name}-worker"
  autoscaler_group_name = "${var.name}-autoscaler"
  launch_hook_name      = "${var.name}-worker-launch"
  termination_hook_name = "${var.name}-worker-drain"

  # Every Auto Scaling action granted in iam.tf is scoped to this ARN.
  worker_group_arn = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.worker_group_name}"

  # An image reference with an explicit tag or digest: [registry[:port]/]path(:tag|@sha256:hex|:tag@sha256:hex).
  image_reference_pattern = "^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$"

  # SSM parameter paths: each role reads its own paths and nothing else.
  worker_parameter_path          = "/${var.name}/worker/env"
  worker_file_parameter_path     = "/${var.name}/worker/files"
  autoscaler_parameter_path      = "/${var.name}/autoscaler/env"
  autoscaler_file_parameter_path = "/${var.name}/autoscaler/files"
  autoscaler_config_name         = "/${var.name}/autoscaler/config"
}

# One customer managed key for parameters, secrets, log groups and the broker.
resource "aws_kms_key" "fleet" {
  description             = "${var.name}: SSM parameters, secrets, logs and broker storage"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncryptsThisDeploymentsGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/${var.name}/*"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "fleet" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.fleet.key_id
}

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/${var.name}/worker"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.fleet.arn
}

resource "aws_cloudwatch_log_group" "autoscaler" {
  name              = "/${var.name}/autoscaler"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.fleet.arn
}
