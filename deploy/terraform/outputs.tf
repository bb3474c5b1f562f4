output "vpc_id" {
  description = "VPC the fleet runs in (created or given)."
  value       = module.network.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the worker and autoscaler groups."
  value       = module.network.private_subnet_ids
}

output "worker_group_name" {
  description = "Name of the worker Auto Scaling Group (FLEET_ASG_NAME; the autoscaler's actuator target)."
  value       = module.worker_group.group_name
}

output "worker_group_arn" {
  description = "ARN of the worker Auto Scaling Group."
  value       = module.worker_group.group_arn
}

output "worker_launch_template_id" {
  description = "Launch template of the workers."
  value       = module.worker_group.launch_template_id
}

output "termination_hook_name" {
  description = "Termination lifecycle hook the workers complete after draining (FLEET_LIFECYCLE_HOOK)."
  value       = module.worker_group.termination_hook_name
}

output "launch_hook_name" {
  description = "Launch lifecycle hook the boot script completes once the image is pulled."
  value       = module.worker_group.launch_hook_name
}

output "load_balancer_dns_name" {
  description = "DNS name of the application load balancer."
  value       = module.worker_group.load_balancer_dns_name
}

output "load_balancer_arn" {
  description = "ARN of the application load balancer."
  value       = module.worker_group.load_balancer_arn
}

output "load_balancer_zone_id" {
  description = "Route 53 hosted zone of the load balancer, for an alias record."
  value       = module.worker_group.load_balancer_zone_id
}

output "load_balancer_url" {
  description = "URL of the load balancer's listener: the workers' Open Inference Protocol (/v2 and /v2/*) behind it; any other path answers 404 (the workers' /healthz, /readyz and /metrics are not reachable through it)."
  value       = module.worker_group.load_balancer_url
}

output "inference_url" {
  description = "Base URL of the Open Inference Protocol REST API through the load balancer (KServe v2): GET <url>/health/ready, POST <url>/models/<model>/infer."
  value       = "${module.worker_group.load_balancer_url}/v2"
}

output "grpc_endpoint" {
  description = "With alb_grpc: host:port of the Open Inference Protocol's gRPC service (inference.GRPCInferenceService) through the load balancer, over TLS. Null otherwise."
  value       = var.alb_grpc ? "${module.worker_group.load_balancer_dns_name}:443" : null
}

output "target_group_arn" {
  description = "Target group of the workers' Open Inference Protocol REST port (health check: /v2/health/ready)."
  value       = module.worker_group.target_group_arn
}

output "grpc_target_group_arn" {
  description = "With alb_grpc: target group of the workers' Open Inference Protocol gRPC port (health check: the ServerReady RPC). Null otherwise."
  value       = module.worker_group.grpc_target_group_arn
}

output "worker_health_path" {
  description = "Health check path of the target group: the worker's Open Inference Protocol readiness (/v2/health/ready)."
  value       = module.worker_group.health_path
}

output "autoscaler_group_name" {
  description = "Name of the autoscaler's group of one."
  value       = module.autoscaler.group_name
}

output "worker_role_arn" {
  description = "IAM role of the worker instances."
  value       = module.worker_group.role_arn
}

output "autoscaler_role_arn" {
  description = "IAM role of the autoscaler instance."
  value       = module.autoscaler.role_arn
}

output "worker_parameter_path" {
  description = "SSM path holding the worker's environment (one SecureString per variable)."
  value       = module.worker_group.parameter_path
}

output "autoscaler_parameter_path" {
  description = "SSM path holding the autoscaler's environment."
  value       = module.autoscaler.parameter_path
}

output "autoscaler_config_parameter" {
  description = "SSM parameter holding the autoscaler's TOML configuration."
  value       = module.autoscaler.config_parameter
}

output "broker_endpoint" {
  description = "Endpoint of the managed broker (without credentials): Amazon MQ's amqps://host:5671, or the MSK bootstrap brokers of msk_auth's port; null with an external broker."
  value       = module.broker.endpoint
}

output "broker_client_url" {
  description = "The broker URL the workers and the autoscaler are given (FLEET_BROKER_URL), without a password: a user's password comes from FLEET_BROKER_PASSWORD_FILE (broker_password_secret_arn). Amazon MQ: amqps://<broker_username>@host:5671 naming the management API; MSK: kafka+sasl+ssl:// with sasl_mechanism=AWS_MSK_IAM (iam) or SCRAM-SHA-512 (scram), kafka+ssl:// (tls), kafka:// (plaintext). Null with an external broker."
  value       = module.broker.client_url
}

output "broker_username" {
  description = "The user the fleet connects to the managed broker as (Amazon MQ's application user, MSK's SCRAM user); null where there is none (external broker, MSK without SCRAM)."
  value       = module.broker.password_file ? var.broker_username : null
}

output "broker_management_url" {
  description = "Amazon MQ: the RabbitMQ management API and web console (HTTPS on 443), where the autoscaler reads queue statistics; null otherwise."
  value       = module.broker.management_url
}

output "kafka_producer_policy_json" {
  description = "MSK with IAM access control (msk_auth = \"iam\"): an IAM policy for a producer's role: connect, publish to the models' topics, read their groups' lag, read the shared reply topic (fleet.replies), or create, read and delete a reply topic of its own (fleet.inbox.*). Null otherwise."
  value       = module.broker.producer_kafka_policy_json
}

output "security_group_ids" {
  description = "Security group of every role: alb, worker, autoscaler and broker (null with an external broker). Add a producer's group to broker_client_security_group_ids to let it reach a managed broker."
  value = {
    alb        = module.network.alb_security_group_id
    worker     = module.network.worker_security_group_id
    autoscaler = module.network.autoscaler_security_group_id
    broker     = module.broker.security_group_id
  }
}

output "broker_security_group_id" {
  description = "Security group of the managed broker; null with an external broker."
  value       = module.broker.security_group_id
}

output "worker_security_group_id" {
  description = "Security group of the workers."
  value       = module.network.worker_security_group_id
}

output "autoscaler_security_group_id" {
  description = "Security group of the autoscaler."
  value       = module.network.autoscaler_security_group_id
}

output "alb_security_group_id" {
  description = "Security group of the load balancer."
  value       = module.network.alb_security_group_id
}

output "ecr_repository_urls" {
  description = "ECR repositories created here (create_ecr_repositories): worker (the GPU image) and cpu (the CPU image); push to these, then set worker_image and autoscaler_image."
  value       = module.images.repository_urls
}

output "models_bucket" {
  description = "S3 bucket of the model repository (created here unless models_bucket was given)."
  value       = module.worker_group.models_bucket
}

output "models_uri" {
  description = "The model repository the workers load (FLEET_MODELS): upload models here with fleet models push --to <models_uri> (it checks the repository first and skips files already there)."
  value       = module.worker_group.models_uri
}

output "broker_password_secret_arn" {
  description = "Secrets Manager secret with the password of broker_username: Amazon MQ's application user (the secret is the password), MSK's SCRAM user (JSON: username, password; its name starts with AmazonMSK_). Null otherwise."
  value       = module.broker.password_secret_arn
}

output "broker_admin_username" {
  description = "Amazon MQ: the administrator Amazon MQ creates (mq_admin_username), for creating the fleet's user; null otherwise."
  value       = var.broker == "rabbitmq" ? var.mq_admin_username : null
}

output "broker_admin_secret_arn" {
  description = "Amazon MQ: Secrets Manager secret with the administrator's password (mq_admin_username), for creating the fleet's user and for operators; no instance reads it. Null otherwise."
  value       = module.broker.admin_secret_arn
}

output "kms_key_arn" {
  description = "KMS key encrypting the parameters, secrets, log groups and MSK storage."
  value       = aws_kms_key.fleet.arn
}

output "log_groups" {
  description = "CloudWatch log groups of the worker and autoscaler containers."
  value = {
    worker     = module.worker_group.log_group_name
    autoscaler = module.autoscaler.log_group_name
  }
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the worker group, the load balancer and (with metrics_namespace) the autoscaler."
  value       = module.worker_group.dashboard_name
}

output "jobs_bucket" {
  description = "The jobs bucket (results/ and payloads/), or null with jobs = false."
  value       = module.worker_group.jobs_bucket
}

output "jobs_results_url" {
  description = "The result store of jobs (the workers' FLEET_RESULTS): give clients the same, Client(broker, results=...) and fleet jobs --results."
  value       = module.worker_group.jobs_results_url
}

output "jobs_payloads_url" {
  description = "The payload store of the claim check (the workers' FLEET_PAYLOADS): give clients the same, Client(broker, payloads=...)."
  value       = module.worker_group.jobs_payloads_url
}

output "jobs_client_policy_json" {
  description = "An IAM policy for the roles of clients that submit jobs or send large payloads: the jobs bucket's two prefixes and the fleet key through S3. Null with jobs = false."
  value       = module.worker_group.jobs_client_policy_json
}
