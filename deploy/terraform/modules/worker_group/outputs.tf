output "group_name" {
  description = "Name of the worker Auto Scaling Group (FLEET_ASG_NAME; the autoscaler's actuator target)."
  value       = aws_autoscaling_group.worker.name
}

output "group_arn" {
  description = "ARN of the worker Auto Scaling Group."
  value       = aws_autoscaling_group.worker.arn
}

output "group_policy_arn" {
  description = "The worker group's ARN as IAM policies name it (any group id, this group's name): the resource of every Auto Scaling action granted on it. Known at plan time."
  value       = local.worker_group_arn
}

output "group_name_planned" {
  description = "The worker group's name, known at plan time (what group_name will be)."
  value       = local.worker_group_name
}

output "launch_template_id" {
  description = "Launch template of the workers."
  value       = aws_launch_template.worker.id
}

output "launch_hook_name" {
  description = "Launch lifecycle hook the boot script completes once the image is pulled."
  value       = local.launch_hook_name
}

output "termination_hook_name" {
  description = "Termination lifecycle hook the workers complete after draining (FLEET_LIFECYCLE_HOOK)."
  value       = local.termination_hook_name
}

output "require_gpu" {
  description = "Whether the boot script refuses an instance whose GPU cannot be used."
  value       = local.worker_require_gpu
}

output "role_arn" {
  description = "IAM role of the worker instances."
  value       = aws_iam_role.worker.arn
}

output "parameter_path" {
  description = "SSM path holding the worker's environment (one SecureString per variable)."
  value       = local.worker_parameter_path
}

output "log_group_name" {
  description = "CloudWatch log group of the worker containers."
  value       = aws_cloudwatch_log_group.worker.name
}

output "load_balancer_dns_name" {
  description = "DNS name of the application load balancer."
  value       = aws_lb.this.dns_name
}

output "load_balancer_arn" {
  description = "ARN of the application load balancer."
  value       = aws_lb.this.arn
}

output "load_balancer_zone_id" {
  description = "Route 53 hosted zone of the load balancer, for an alias record."
  value       = aws_lb.this.zone_id
}

output "load_balancer_url" {
  description = "URL of the load balancer's listener."
  value       = local.alb_url
}

output "target_group_arn" {
  description = "Target group of the workers' Open Inference Protocol REST port."
  value       = aws_lb_target_group.worker.arn
}

output "grpc_target_group_arn" {
  description = "With alb_grpc: target group of the workers' Open Inference Protocol gRPC port. Null otherwise."
  value       = one(aws_lb_target_group.grpc[*].arn)
}

output "health_path" {
  description = "Health check path of the target group: the worker's Open Inference Protocol readiness."
  value       = local.worker_health_path
}

output "models_bucket" {
  description = "S3 bucket of the model repository (created here unless models_bucket was given)."
  value       = local.models_bucket
}

output "models_uri" {
  description = "The model repository the workers load (FLEET_MODELS)."
  value       = local.models_uri
}

output "jobs_bucket" {
  description = "The jobs bucket (results/ and payloads/), or null with jobs = false."
  value       = local.jobs_bucket
}

output "jobs_results_url" {
  description = "The result store of jobs (the workers' FLEET_RESULTS)."
  value       = local.jobs_results_url
}

output "jobs_payloads_url" {
  description = "The payload store of the claim check (the workers' FLEET_PAYLOADS)."
  value       = local.jobs_payloads_url
}

output "jobs_client_policy_json" {
  description = "An IAM policy for the roles of clients that submit jobs or send large payloads. Null with jobs = false."
  value       = var.jobs ? data.aws_iam_policy_document.jobs_access.json : null
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the worker group, the load balancer and (with metrics_namespace) the autoscaler."
  value       = aws_cloudwatch_dashboard.fleet.dashboard_name
}

# The resources themselves, for composition and for `terraform test`.

output "autoscaling_group" {
  description = "The worker Auto Scaling Group."
  value       = aws_autoscaling_group.worker
}

output "launch_template" {
  description = "The workers' launch template."
  value       = aws_launch_template.worker
}

output "role" {
  description = "The workers' IAM role."
  value       = aws_iam_role.worker
}

output "role_policies" {
  description = "The workers' inline policies: worker, kafka and jobs (lists of zero or one for the last two)."
  value = {
    worker = aws_iam_role_policy.worker
    kafka  = aws_iam_role_policy.worker_kafka
    jobs   = aws_iam_role_policy.worker_jobs
  }
}

output "parameters" {
  description = "The workers' SSM parameters: env (by variable), broker_url, and broker_password (a list of zero or one)."
  value = {
    env             = aws_ssm_parameter.worker_env
    broker_url      = aws_ssm_parameter.worker_broker_url
    broker_password = aws_ssm_parameter.worker_broker_password
  }
  sensitive = true
}

output "load_balancer" {
  description = "The application load balancer."
  value       = aws_lb.this
}

output "target_groups" {
  description = "The target groups: oip, and grpc (a list of zero or one)."
  value = {
    oip  = aws_lb_target_group.worker
    grpc = aws_lb_target_group.grpc
  }
}

output "listeners" {
  description = "The listeners: http and https (lists of zero or one; one of them exists)."
  value = {
    http  = aws_lb_listener.http
    https = aws_lb_listener.https
  }
}

output "listener_rules" {
  description = "The listener rules: oip, and grpc (a list of zero or one)."
  value = {
    oip  = aws_lb_listener_rule.oip
    grpc = aws_lb_listener_rule.grpc
  }
}

output "models_bucket_resources" {
  description = "The models bucket and its configuration, where created here (lists of zero or one)."
  value = {
    bucket              = aws_s3_bucket.models
    public_access_block = aws_s3_bucket_public_access_block.models
    versioning          = aws_s3_bucket_versioning.models
  }
}

output "jobs_bucket_resources" {
  description = "The jobs bucket and its configuration (lists of zero or one)."
  value = {
    bucket              = aws_s3_bucket.jobs
    public_access_block = aws_s3_bucket_public_access_block.jobs
    encryption          = aws_s3_bucket_server_side_encryption_configuration.jobs
    lifecycle           = aws_s3_bucket_lifecycle_configuration.jobs
  }
}
