output "group_name" {
  description = "Name of the autoscaler's group of one."
  value       = aws_autoscaling_group.autoscaler.name
}

output "role_arn" {
  description = "IAM role of the autoscaler instance."
  value       = aws_iam_role.autoscaler.arn
}

output "parameter_path" {
  description = "SSM path holding the autoscaler's environment."
  value       = local.autoscaler_parameter_path
}

output "config_parameter" {
  description = "SSM parameter holding the autoscaler's TOML configuration."
  value       = local.autoscaler_config_name
}

output "log_group_name" {
  description = "CloudWatch log group of the autoscaler container."
  value       = aws_cloudwatch_log_group.autoscaler.name
}

# The resources themselves, for composition and for `terraform test`.

output "autoscaling_group" {
  description = "The autoscaler's Auto Scaling Group of one."
  value       = aws_autoscaling_group.autoscaler
}

output "launch_template" {
  description = "The autoscaler's launch template."
  value       = aws_launch_template.autoscaler
}

output "role" {
  description = "The autoscaler's IAM role."
  value       = aws_iam_role.autoscaler
}

output "role_policies" {
  description = "The autoscaler's inline policies: autoscaler, and kafka (a list of zero or one)."
  value = {
    autoscaler = aws_iam_role_policy.autoscaler
    kafka      = aws_iam_role_policy.autoscaler_kafka
  }
}

output "parameters" {
  description = "The autoscaler's SSM parameters: env (by variable), config, broker_password (a list of zero or one) and policy_state."
  value = {
    env             = aws_ssm_parameter.autoscaler_env
    config          = aws_ssm_parameter.autoscaler_config
    broker_password = aws_ssm_parameter.autoscaler_broker_password
    policy_state    = aws_ssm_parameter.policy_state
  }
  sensitive = true
}
