# The autoscaler as a service (autoscaler.tf): one small instance in an Auto
# Scaling Group of one that sets the worker group's desired capacity; its SSM
# parameters (config.tf), instance role (iam.tf) and log group.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  autoscaler_group_name = "${var.name}-autoscaler"

  # SSM parameter paths: the autoscaler reads these and nothing else.
  autoscaler_parameter_path      = "/${var.name}/autoscaler/env"
  autoscaler_file_parameter_path = "/${var.name}/autoscaler/files"
  autoscaler_config_name         = "/${var.name}/autoscaler/config"
  # The policy's state (cooldowns, stabilization window, learned surges),
  # which the autoscaler writes after each poll and reads back at start.
  policy_state_name = "/${var.name}/autoscaler/policy-state"
}

resource "aws_cloudwatch_log_group" "autoscaler" {
  name              = "/${var.name}/autoscaler"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}
