# The fleet on AWS: a GPU worker Auto Scaling Group fed from a broker, an
# autoscaler service that sets the group's desired capacity, and the network,
# load balancer, IAM and configuration they need. This root composes the
# modules and holds what they share: the provider, the fleet's KMS key and the
# check on the MSK plaintext opt-in.
#
#   modules/network       VPC and subnets (new, or an existing VPC), flow logs,
#                         the security groups of the load balancer, the workers
#                         and the autoscaler
#   modules/broker        optional managed broker (Amazon MQ for RabbitMQ, or
#                         MSK), its security group and the rules towards any
#                         broker, its secrets, the Kafka IAM policy documents
#   modules/images        ECR repositories for the worker and CPU images
#   modules/worker_group  launch template, Auto Scaling Group, warm pool,
#                         lifecycle hooks, load balancer, the workers' SSM
#                         parameters and role, models and jobs buckets, dashboard
#   modules/autoscaler    the autoscaler as a group of one, its SSM parameters
#                         and role
#   moved.tf              the addresses of the resources before the modules

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

  # An image reference with an explicit tag or digest: [registry[:port]/]path(:tag|@sha256:hex|:tag@sha256:hex).
  image_reference_pattern = "^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$"
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

# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------

module "network" {
  source = "./modules/network"

  name               = var.name
  kms_key_arn        = aws_kms_key.fleet.arn
  log_retention_days = var.log_retention_days

  vpc_id             = var.vpc_id
  private_subnet_ids = var.private_subnet_ids
  public_subnet_ids  = var.public_subnet_ids
  vpc_cidr           = var.vpc_cidr
  az_count           = var.az_count
  single_nat_gateway = var.single_nat_gateway
  enable_flow_logs   = var.enable_flow_logs

  alb_internal            = var.alb_internal
  alb_ingress_cidrs       = var.alb_ingress_cidrs
  certificate_arn         = var.certificate_arn
  alb_http_port           = var.alb_http_port
  alb_grpc                = var.alb_grpc
  worker_oip_port         = var.worker_oip_port
  worker_grpc_port        = var.worker_grpc_port
  worker_http_port        = var.worker_http_port
  autoscaler_metrics_port = var.autoscaler_metrics_port
  metrics_scrape_cidrs    = var.metrics_scrape_cidrs
}

module "broker" {
  source = "./modules/broker"

  name               = var.name
  kms_key_arn        = aws_kms_key.fleet.arn
  log_retention_days = var.log_retention_days

  vpc_id                       = module.network.vpc_id
  private_subnet_ids           = module.network.private_subnet_ids
  worker_security_group_id     = module.network.worker_security_group_id
  autoscaler_security_group_id = module.network.autoscaler_security_group_id

  broker                           = var.broker
  broker_url                       = var.broker_url
  external_broker_cidrs            = var.external_broker_cidrs
  external_broker_ports            = var.external_broker_ports
  broker_client_cidrs              = var.broker_client_cidrs
  broker_client_security_group_ids = var.broker_client_security_group_ids
  broker_username                  = var.broker_username
  mq_admin_username                = var.mq_admin_username
  mq_instance_type                 = var.mq_instance_type
  mq_engine_version                = var.mq_engine_version
  mq_deployment_mode               = var.mq_deployment_mode
  msk_kafka_version                = var.msk_kafka_version
  msk_instance_type                = var.msk_instance_type
  msk_broker_nodes                 = var.msk_broker_nodes
  msk_auth                         = var.msk_auth
  msk_volume_size_gb               = var.msk_volume_size_gb

  models     = var.models
  job_notify = var.job_notify
}

module "images" {
  source = "./modules/images"

  name                = var.name
  create_repositories = var.create_ecr_repositories
  kms_key_arn         = aws_kms_key.fleet.arn
  images              = [var.worker_image, var.autoscaler_image]
  repository_arns     = var.ecr_repository_arns
}

module "worker_group" {
  source = "./modules/worker_group"

  name               = var.name
  tags               = local.tags
  kms_key_arn        = aws_kms_key.fleet.arn
  log_retention_days = var.log_retention_days

  vpc_id                   = module.network.vpc_id
  private_subnet_ids       = module.network.private_subnet_ids
  alb_subnet_ids           = module.network.alb_subnet_ids
  worker_security_group_id = module.network.worker_security_group_id
  alb_security_group_id    = module.network.alb_security_group_id
  ecr_pull_arns            = module.images.pull_arns

  broker_url           = module.broker.url
  broker_password_file = module.broker.password_file
  broker_password      = module.broker.password
  broker_username      = var.broker_username
  kafka_iam            = module.broker.msk_iam
  kafka_policy_json    = module.broker.worker_kafka_policy_json

  worker_image                    = var.worker_image
  worker_instance_type            = var.worker_instance_type
  worker_require_gpu              = var.worker_require_gpu
  worker_ami_owners               = var.worker_ami_owners
  worker_ami_ssm_parameter        = var.worker_ami_ssm_parameter
  worker_root_volume_size_gb      = var.worker_root_volume_size_gb
  ebs_kms_key_arn                 = var.ebs_kms_key_arn
  worker_min_size                 = var.worker_min_size
  worker_max_size                 = var.worker_max_size
  worker_initial_capacity         = var.worker_initial_capacity
  warm_pool_min_size              = var.warm_pool_min_size
  warm_pool_max_prepared_capacity = var.warm_pool_max_prepared_capacity
  worker_http_port                = var.worker_http_port
  worker_oip_port                 = var.worker_oip_port
  worker_grpc_port                = var.worker_grpc_port
  drain_timeout_seconds           = var.drain_timeout_seconds
  launch_timeout_seconds          = var.launch_timeout_seconds
  health_check_grace_period       = var.health_check_grace_period
  worker_env                      = var.worker_env
  enable_ssm_session_manager      = var.enable_ssm_session_manager

  models_bucket       = var.models_bucket
  models_prefix       = var.models_prefix
  models_kms_key_arn  = var.models_kms_key_arn
  jobs                = var.jobs
  jobs_retention_days = var.jobs_retention_days
  job_notify          = var.job_notify
  metrics_namespace   = var.metrics_namespace

  alb_internal            = var.alb_internal
  certificate_arn         = var.certificate_arn
  alb_http_port           = var.alb_http_port
  alb_grpc                = var.alb_grpc
  alb_access_logs_bucket  = var.alb_access_logs_bucket
  alb_deletion_protection = var.alb_deletion_protection
}

module "autoscaler" {
  source = "./modules/autoscaler"

  name               = var.name
  tags               = local.tags
  kms_key_arn        = aws_kms_key.fleet.arn
  log_retention_days = var.log_retention_days

  private_subnet_ids = module.network.private_subnet_ids
  security_group_id  = module.network.autoscaler_security_group_id
  ecr_pull_arns      = module.images.pull_arns

  worker_group_name = module.worker_group.group_name_planned
  worker_group_arn  = module.worker_group.group_policy_arn
  worker_min_size   = var.worker_min_size
  worker_max_size   = var.worker_max_size

  broker_url           = module.broker.url
  broker_password_file = module.broker.password_file
  broker_password      = module.broker.password
  broker_username      = var.broker_username
  kafka_iam            = module.broker.msk_iam
  kafka_policy_json    = module.broker.autoscaler_kafka_policy_json

  autoscaler_image             = var.autoscaler_image
  autoscaler_instance_type     = var.autoscaler_instance_type
  autoscaler_ami_owners        = var.autoscaler_ami_owners
  autoscaler_ami_ssm_parameter = var.autoscaler_ami_ssm_parameter
  autoscaler_metrics_port      = var.autoscaler_metrics_port
  models                       = var.models
  autoscaler_config            = var.autoscaler_config
  autoscaler_env               = var.autoscaler_env
  autoscaler_warm_pool         = var.autoscaler_warm_pool
  metrics_namespace            = var.metrics_namespace
  ebs_kms_key_arn              = var.ebs_kms_key_arn
  enable_ssm_session_manager   = var.enable_ssm_session_manager
}

# Plaintext is an explicit opt-in; plan and apply say so every time.
check "msk_plaintext" {
  assert {
    condition     = !(var.broker == "kafka" && var.msk_auth == "plaintext")
    error_message = "msk_auth = \"plaintext\": MSK takes clients without TLS and without authentication on 9092; requests, replies and every topic are readable and writable by anything the security group admits."
  }
}
