# The GPU worker group and what serves it: the launch template and Auto Scaling
# Group with its warm pool and lifecycle hooks (worker.tf), the application
# load balancer in front of the workers' Open Inference Protocol (alb.tf), the
# workers' SSM parameters (config.tf), instance role (iam.tf), log group, model
# repository bucket (models.tf), jobs bucket (jobs.tf) and the CloudWatch
# dashboard (dashboard.tf).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  worker_group_name     = "${var.name}-worker"
  launch_hook_name      = "${var.name}-worker-launch"
  termination_hook_name = "${var.name}-worker-drain"

  # Every Auto Scaling action granted to the workers (iam.tf) and to the
  # autoscaler (output group_policy_arn) is scoped to this ARN.
  worker_group_arn = "arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.worker_group_name}"

  # SSM parameter paths: the workers read these and nothing else.
  worker_parameter_path      = "/${var.name}/worker/env"
  worker_file_parameter_path = "/${var.name}/worker/files"
}

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/${var.name}/worker"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}
