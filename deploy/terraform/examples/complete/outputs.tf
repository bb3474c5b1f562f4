output "inference_url" {
  description = "Base URL of the Open Inference Protocol REST API through the load balancer."
  value       = module.fleet.inference_url
}

output "grpc_endpoint" {
  description = "host:port of the Open Inference Protocol's gRPC service through the load balancer."
  value       = module.fleet.grpc_endpoint
}

output "broker_endpoint" {
  description = "The MSK bootstrap brokers (IAM port) producers connect to."
  value       = module.fleet.broker_endpoint
}

output "kafka_producer_policy_json" {
  description = "The IAM policy to attach to a producer's role."
  value       = module.fleet.kafka_producer_policy_json
}

output "ecr_repository_urls" {
  description = "Where a release pushes the images."
  value       = module.fleet.ecr_repository_urls
}

output "models_uri" {
  description = "Where fleet models push uploads the model repository."
  value       = module.fleet.models_uri
}

output "jobs_results_url" {
  description = "The result store clients give Client(results=...)."
  value       = module.fleet.jobs_results_url
}

output "jobs_client_policy_json" {
  description = "The IAM policy for clients that submit jobs."
  value       = module.fleet.jobs_client_policy_json
}

output "worker_group_name" {
  description = "The worker Auto Scaling Group."
  value       = module.fleet.worker_group_name
}

output "dashboard_name" {
  description = "The CloudWatch dashboard."
  value       = module.fleet.dashboard_name
}
