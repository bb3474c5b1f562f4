# A production deployment of the fleet: deploy/terraform as a module, in an
# existing VPC, behind an internal HTTPS load balancer with gRPC, with Amazon
# MSK (TLS and IAM) as the broker. Copy terraform.tfvars.example to
# terraform.tfvars, fill in your account's values, then
#
#   terraform init && terraform plan
#
# deploy/terraform is also a root module of its own (applied directly, as its
# README does), so it keeps its provider block: its resources use the AWS
# provider it configures from the region and tags given below, and it cannot
# be called with count, for_each or depends_on. The provider block here is
# this root's own, for anything you add next to the fleet: keep its region
# the fleet's.

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Application = "fleet", Deployment = var.name }, var.tags)
  }
}

module "fleet" {
  source = "../.."

  name               = var.name
  region             = var.region
  tags               = var.tags
  log_retention_days = 400

  # Network: the platform team's VPC; the workers, the autoscaler, the
  # load balancer and the brokers in its private subnets.
  vpc_id             = var.vpc_id
  private_subnet_ids = var.private_subnet_ids

  # Workers: g5.2xlarge, two always in service, a warm pool of two.
  worker_image                    = var.worker_image
  worker_instance_type            = "g5.2xlarge"
  worker_min_size                 = 2
  worker_max_size                 = 16
  worker_initial_capacity         = 2
  warm_pool_min_size              = 2
  warm_pool_max_prepared_capacity = 4
  worker_root_volume_size_gb      = 200
  ebs_kms_key_arn                 = var.ebs_kms_key_arn
  drain_timeout_seconds           = 600
  health_check_grace_period       = 900
  worker_env = {
    FLEET_PREFETCH = "4"
  }

  # Models and jobs.
  models              = var.models
  models_bucket       = var.models_bucket
  models_prefix       = "models"
  models_kms_key_arn  = var.models_kms_key_arn
  jobs                = true
  jobs_retention_days = 3
  job_notify          = "fleet-jobs-finished"

  # Images: the repositories this deployment creates, plus the release
  # account's.
  create_ecr_repositories = true
  ecr_repository_arns     = var.ecr_repository_arns

  # Load balancer: internal, HTTPS with gRPC, reachable from the corporate
  # network only; access logs kept; protected from deletion.
  alb_internal            = true
  certificate_arn         = var.certificate_arn
  alb_grpc                = true
  alb_ingress_cidrs       = var.client_cidrs
  alb_access_logs_bucket  = var.alb_access_logs_bucket
  alb_deletion_protection = true

  # Metrics: the monitoring VPC's Prometheus scrapes the instances directly.
  metrics_scrape_cidrs = var.metrics_scrape_cidrs
  metrics_namespace    = "Fleet"

  # Autoscaler.
  autoscaler_image         = var.autoscaler_image
  autoscaler_instance_type = "t3.small"

  # Broker: Amazon MSK with TLS and IAM access control; the producers'
  # network may reach it.
  broker              = "kafka"
  msk_auth            = "iam"
  msk_instance_type   = "kafka.m5.large"
  msk_volume_size_gb  = 500
  broker_client_cidrs = var.client_cidrs

  enable_ssm_session_manager = true
}
