# ---------------------------------------------------------------------------
# General
# ---------------------------------------------------------------------------

variable "name" {
  description = "Name of this deployment: a prefix for every resource, SSM path and log group."
  type        = string
  default     = "fleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,23}$", var.name))
    error_message = "name must be 2-24 characters: lowercase letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Retention of the worker, autoscaler and VPC flow log groups, in days."
  type        = number
  default     = 365
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

variable "vpc_id" {
  description = "An existing VPC to deploy into. Leave null to create a new VPC (see vpc_cidr, az_count)."
  type        = string
  default     = null
}

variable "private_subnet_ids" {
  description = "With vpc_id: the private subnets (at least two, in different availability zones) for the workers, the autoscaler, an internal load balancer and a managed broker. They need outbound access to AWS APIs and the image registry (NAT or VPC endpoints)."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.private_subnet_ids) == 0 || length(var.private_subnet_ids) >= 2
    error_message = "Give at least two private subnets, in different availability zones."
  }
}

variable "public_subnet_ids" {
  description = "With vpc_id and alb_internal = false: the public subnets (at least two) for an internet-facing load balancer."
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR block of the new VPC (when vpc_id is null)."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones the new VPC spans (when vpc_id is null): one public and one private subnet in each."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count must be between 2 and 6."
  }
}

variable "single_nat_gateway" {
  description = "New VPC: one NAT gateway for all private subnets (cheaper) instead of one per availability zone (survives a zone outage)."
  type        = bool
  default     = true
}

variable "enable_flow_logs" {
  description = "New VPC: record VPC flow logs to CloudWatch Logs."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------

variable "worker_image" {
  description = "Container image of the worker (the GPU image, deploy/docker/Dockerfile) with an explicit tag or digest, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0 (output ecr_repository_urls). An ECR image is pulled with the instance role: its repository is granted automatically."
  type        = string

  validation {
    condition     = can(regex(local.image_reference_pattern, var.worker_image))
    error_message = "worker_image must be an image reference with an explicit tag or digest (registry/repository:tag or @sha256:...), without spaces."
  }
}

variable "worker_instance_type" {
  description = "EC2 instance type of the workers."
  type        = string
  default     = "g5.xlarge"
}

variable "worker_require_gpu" {
  description = "Refuse to start the worker when the instance's GPU cannot be used (nvidia-smi finds none): the launch lifecycle hook times out and the group replaces the instance, instead of a GPU instance serving on its CPU. Null: true for NVIDIA GPU instance types (g4dn, g5, g6, p4d, p5, ...)."
  type        = bool
  default     = null
}

variable "worker_ami_owners" {
  description = "Owners the worker AMI may come from (account IDs, \"self\", \"amazon\", \"aws-marketplace\"). Add \"self\" or your account ID for a team's own AMI."
  type        = list(string)
  default     = ["amazon"]
}

variable "worker_ami_ssm_parameter" {
  description = "Public SSM parameter naming the worker AMI. The default is the AWS Deep Learning Base AMI (NVIDIA driver, Docker, NVIDIA Container Toolkit, AWS CLI)."
  type        = string
  default     = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
}

variable "worker_root_volume_size_gb" {
  description = "Size of the workers' encrypted gp3 root volume (the image and the model cache live there)."
  type        = number
  default     = 100
}

variable "ebs_kms_key_arn" {
  description = "KMS key for the root volumes. Null uses the account's default EBS key (aws/ebs); a customer key must grant the Auto Scaling service-linked role."
  type        = string
  default     = null
}

variable "worker_min_size" {
  description = "Minimum number of in-service workers."
  type        = number
  default     = 0
}

variable "worker_max_size" {
  description = "Maximum number of in-service workers."
  type        = number
  default     = 8
}

variable "worker_initial_capacity" {
  description = "Desired capacity when the group is created. Afterwards the autoscaler owns it (Terraform ignores changes)."
  type        = number
  default     = 1
}

variable "warm_pool_min_size" {
  description = "Stopped, pre-initialised instances (image pulled, boot done) kept in the warm pool: the size of the first scale-out step that starts in seconds instead of minutes. The default, 1, covers the first step of the default worker_initial_capacity of 1 (doubling). Each one is launched once at apply (it needs its vCPUs of On-Demand quota then) and costs only its EBS volume while stopped. 0: no warm instances."
  type        = number
  default     = 1

  validation {
    condition     = var.warm_pool_min_size >= 0
    error_message = "warm_pool_min_size must be 0 or more."
  }
}

variable "warm_pool_max_prepared_capacity" {
  description = "Cap on in-service plus warm instances; the pool holds this minus the desired capacity, never fewer than warm_pool_min_size. Null: warm_pool_min_size, so the pool holds exactly warm_pool_min_size instances whatever the desired capacity (AWS's own default, the group's max_size, would keep max_size - desired stopped instances)."
  type        = number
  default     = null
}

variable "worker_http_port" {
  description = "Port of the worker's health and metrics endpoints (/healthz, /readyz, /metrics): not behind the load balancer; reachable only from metrics_scrape_cidrs."
  type        = number
  default     = 8080
}

variable "worker_oip_port" {
  description = "Port of the worker's Open Inference Protocol REST API (KServe v2, /v2/...; FLEET_OIP_PORT): the load balancer's target group, health-checked on /v2/health/ready."
  type        = number
  default     = 8000

  validation {
    condition     = var.worker_oip_port >= 1 && var.worker_oip_port <= 65535 && var.worker_oip_port != var.worker_http_port
    error_message = "worker_oip_port must be a TCP port (1-65535) other than worker_http_port: the load balancer must not reach /metrics."
  }
}

variable "worker_grpc_port" {
  description = "Port of the worker's Open Inference Protocol gRPC server (inference.GRPCInferenceService; FLEET_OIP_GRPC_PORT), served and behind the load balancer only with alb_grpc."
  type        = number
  default     = 8001

  validation {
    condition     = var.worker_grpc_port >= 1 && var.worker_grpc_port <= 65535 && !contains([var.worker_http_port, var.worker_oip_port], var.worker_grpc_port)
    error_message = "worker_grpc_port must be a TCP port (1-65535) other than worker_http_port and worker_oip_port."
  }
}

variable "drain_timeout_seconds" {
  description = "How long a leaving worker may drain before the termination lifecycle hook times out and the instance goes anyway."
  type        = number
  default     = 300

  validation {
    condition     = var.drain_timeout_seconds >= 30 && var.drain_timeout_seconds <= 7200
    error_message = "drain_timeout_seconds must be between 30 and 7200 (the lifecycle hook's heartbeat timeout)."
  }
}

variable "launch_timeout_seconds" {
  description = "How long a launching instance may take to pull the image and start before the launch lifecycle hook abandons it."
  type        = number
  default     = 900
}

variable "health_check_grace_period" {
  description = "Seconds after launch before failing load balancer health checks replace an instance: cover model download and warm-up."
  type        = number
  default     = 600
}

variable "models_bucket" {
  description = "Existing S3 bucket holding the model repository (<prefix>/<model>/<version>/model.onnx). Null: a bucket is created (output models_uri): versioned, encrypted with the fleet key, public access blocked, TLS only. The workers get read access to models_prefix only."
  type        = string
  default     = null
}

variable "models_prefix" {
  description = "Key prefix of the model repository inside models_bucket, without leading or trailing slash."
  type        = string
  default     = "models"
}

variable "models_kms_key_arn" {
  description = "KMS key the model objects are encrypted with (SSE-KMS), if any: the workers get kms:Decrypt on it."
  type        = string
  default     = null
}

variable "jobs" {
  description = "Create the jobs bucket: the workers store jobs' results in it (FLEET_RESULTS=s3://<bucket>/results) and take large payloads through it (FLEET_PAYLOADS=s3://<bucket>/payloads). False: no bucket; jobs need a result store given through worker_env (FLEET_RESULTS, e.g. a Redis)."
  type        = bool
  default     = true
}

variable "jobs_retention_days" {
  description = "Days the jobs bucket keeps a job's record, result and payloads (S3 expires objects in whole days): more than the longest job TTL clients use (a day by default)."
  type        = number
  default     = 2

  validation {
    condition     = var.jobs_retention_days >= 1 && floor(var.jobs_retention_days) == var.jobs_retention_days
    error_message = "jobs_retention_days: a whole number of days, at least 1."
  }
}

variable "job_notify" {
  description = "A topic exchange (RabbitMQ) or topic (Kafka) that gets a JSON message per finished job (FLEET_NOTIFY; fleet jobs watch reads it). Null: no notifications."
  type        = string
  default     = null

  validation {
    condition     = var.job_notify == null || (can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$", var.job_notify)) && !startswith(coalesce(var.job_notify, "x"), "fleet."))
    error_message = "job_notify: 1-200 letters, digits, '.', '_' or '-', not starting with 'fleet.' (the fleet's own names)."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the autoscaler publishes its metrics into every poll (DesiredCapacity, ScalingDecision, BacklogPerInstance, with the worker group's name as AutoScalingGroupName); its role may put metrics into this namespace only, and the dashboard shows them. Null: no CloudWatch metrics (the dashboard shows the group's own metrics)."
  type        = string
  default     = "Fleet"
}

variable "worker_env" {
  description = "Extra environment for the worker container: its FLEET_* settings (fleet worker --help, e.g. FLEET_PREFETCH or FLEET_MAX_HELD_BYTES) and anything else the image reads. Stored as SecureString parameters under the worker's path."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.worker_env : can(regex("^[A-Z_][A-Z0-9_]*$", k)) && k != "FLEET_BROKER_URL" && length(v) > 0])
    error_message = "worker_env: names are UPPER_SNAKE_CASE, values non-empty, and FLEET_BROKER_URL comes from broker_url / the managed broker."
  }

  validation {
    condition     = length(setintersection(keys(var.worker_env), ["FLEET_OIP_HOST", "FLEET_OIP_PORT", "FLEET_OIP_GRPC_PORT"])) == 0
    error_message = "worker_env must not set FLEET_OIP_HOST, FLEET_OIP_PORT or FLEET_OIP_GRPC_PORT: the load balancer's target groups and security groups follow worker_oip_port, worker_grpc_port and alb_grpc; set those instead."
  }
}

variable "ecr_repository_arns" {
  description = "More ECR repositories the instances may pull from. The repositories created here (create_ecr_repositories) and those worker_image and autoscaler_image name are granted without being listed."
  type        = list(string)
  default     = []
}

variable "create_ecr_repositories" {
  description = "Create two private ECR repositories, <name>/worker (the GPU image) and <name>/cpu (the CPU image, for the autoscaler): immutable tags, scanned on push, encrypted with the fleet key, untagged images expired. Output ecr_repository_urls; push before the instances boot (README)."
  type        = bool
  default     = true
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to both roles so operators can open Session Manager shells (no SSH port is opened either way)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------

variable "alb_internal" {
  description = "Internal load balancer in the private subnets (true) or internet-facing in the public subnets (false)."
  type        = bool
  default     = true
}

variable "alb_ingress_cidrs" {
  description = "CIDR blocks allowed to reach the load balancer listener. Empty: the VPC's CIDR block."
  type        = list(string)
  default     = []
}

variable "certificate_arn" {
  description = "ACM certificate for an HTTPS listener on 443. Null: a plain HTTP listener on alb_http_port (keep the load balancer internal then)."
  type        = string
  default     = null
}

variable "alb_http_port" {
  description = "Port of the HTTP listener when certificate_arn is null."
  type        = number
  default     = 80
}

variable "alb_grpc" {
  description = "Also serve the Open Inference Protocol over gRPC through the load balancer: the workers serve it on worker_grpc_port and the HTTPS listener forwards /inference.GRPCInferenceService/* to a gRPC target group. Needs certificate_arn (the load balancer speaks gRPC on HTTPS listeners only)."
  type        = bool
  default     = false

  validation {
    condition     = !var.alb_grpc || var.certificate_arn != null
    error_message = "alb_grpc = true needs certificate_arn: an application load balancer forwards gRPC only from an HTTPS listener. Set certificate_arn (an ACM certificate) or leave alb_grpc false."
  }
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket for load balancer access logs. Null: access logs off."
  type        = string
  default     = null
}

variable "alb_deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before terraform destroy)."
  type        = bool
  default     = false
}

variable "metrics_scrape_cidrs" {
  description = "CIDR blocks of a Prometheus that scrapes the workers' /metrics and the autoscaler's metrics port directly. Empty: no scrape port is opened."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------
# Autoscaler
# ---------------------------------------------------------------------------

variable "autoscaler_image" {
  description = "Container image of the autoscaler: the CPU image (deploy/docker/Dockerfile.cpu), with an explicit tag or digest, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0. The GPU image would not fit the autoscaler's small instance."
  type        = string

  validation {
    condition     = can(regex(local.image_reference_pattern, var.autoscaler_image))
    error_message = "autoscaler_image must be an image reference with an explicit tag or digest (registry/repository:tag or @sha256:...), without spaces."
  }
}

variable "autoscaler_instance_type" {
  description = "EC2 instance type of the autoscaler (a group of one)."
  type        = string
  default     = "t3.small"
}

variable "autoscaler_ami_owners" {
  description = "Owners the autoscaler AMI may come from (account IDs, \"self\", \"amazon\")."
  type        = list(string)
  default     = ["amazon"]
}

variable "autoscaler_ami_ssm_parameter" {
  description = "Public SSM parameter naming the autoscaler AMI (Amazon Linux 2023)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "autoscaler_metrics_port" {
  description = "Port of the autoscaler's /metrics and /healthz."
  type        = number
  default     = 9102
}

variable "models" {
  description = "Names of the models the fleet serves: the autoscaler watches (and declares) their queues or topics."
  type        = list(string)
  default     = ["digits"]

  validation {
    condition     = length(var.models) > 0
    error_message = "Name at least one model."
  }
}

variable "autoscaler_config" {
  description = "Autoscaler configuration (TOML, see deploy/autoscaler.example.toml), used verbatim: it must carry the broker URL itself. Null: modules/autoscaler/templates/autoscaler.toml.tftpl rendered with this deployment's broker, models, group, region and capacity bounds."
  type        = string
  default     = null
  sensitive   = true
}

variable "autoscaler_warm_pool" {
  description = "The worker group's warm pool as the autoscaler keeps it: null leaves it as warm_pool_min_size made it; \"auto\" keeps the policy's next scale-out step ready, following the fleet's size (never below its size at start); a number keeps that many. Grants the autoscaler autoscaling:PutWarmPool on the worker group."
  type        = string
  default     = null

  validation {
    condition     = var.autoscaler_warm_pool == null || can(regex("^(auto|[0-9]+)$", var.autoscaler_warm_pool))
    error_message = "autoscaler_warm_pool is null, \"auto\" or a whole number of instances."
  }
}

variable "autoscaler_env" {
  description = "Extra environment for the autoscaler container (its settings are in the TOML configuration). Stored as SecureString parameters under the autoscaler's path."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.autoscaler_env : can(regex("^[A-Z_][A-Z0-9_]*$", k)) && length(v) > 0])
    error_message = "autoscaler_env: names are UPPER_SNAKE_CASE and values non-empty."
  }
}

# ---------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------

variable "broker" {
  description = "Where the broker comes from: \"external\" (bring your own, see broker_url), \"rabbitmq\" (Amazon MQ for RabbitMQ) or \"kafka\" (Amazon MSK)."
  type        = string
  default     = "external"

  validation {
    condition     = contains(["external", "rabbitmq", "kafka"], var.broker)
    error_message = "broker must be \"external\", \"rabbitmq\" or \"kafka\"."
  }
}

variable "broker_url" {
  description = "With broker = \"external\": the broker URL (amqp[s]://user:pass@host:port/vhost, or kafka://host:port,... and its TLS and SASL forms kafka+ssl://, kafka+sasl+ssl://, kafka+sasl://). Stored as an encrypted SSM parameter; never in user data."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.broker != "external" || (var.broker_url != null && can(regex("^(amqps?|kafka(\\+ssl|\\+sasl|\\+sasl\\+ssl)?)://", var.broker_url)))
    error_message = "broker = \"external\" needs broker_url (amqp://, amqps://, kafka://, kafka+ssl://, kafka+sasl+ssl:// or kafka+sasl://)."
  }
}

variable "external_broker_cidrs" {
  description = "With broker = \"external\": CIDR blocks the workers and the autoscaler may reach the broker in."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "external_broker_ports" {
  description = "With broker = \"external\": the broker's ports (AMQP, AMQPS, RabbitMQ management, Kafka: plaintext, TLS, SASL/SCRAM and IAM on MSK)."
  type        = list(number)
  default     = [5671, 5672, 9092, 9093, 9094, 9096, 9098, 15671, 15672]
}

variable "broker_client_cidrs" {
  description = "With a managed broker: CIDR blocks of the clients (producers) that may reach the broker's ports. The workers and the autoscaler are admitted without being listed."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.broker_client_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "broker_client_cidrs must be CIDR blocks, and the broker is private: not 0.0.0.0/0."
  }
}

variable "broker_client_security_group_ids" {
  description = "With a managed broker: security groups of the clients (producers) that may reach the broker's ports."
  type        = list(string)
  default     = []
}

variable "mq_instance_type" {
  description = "Amazon MQ broker instance type."
  type        = string
  default     = "mq.m5.large"
}

variable "mq_engine_version" {
  description = "Amazon MQ for RabbitMQ engine version."
  type        = string
  default     = "3.13"
}

variable "mq_deployment_mode" {
  description = "Amazon MQ deployment: CLUSTER_MULTI_AZ (three nodes) or SINGLE_INSTANCE."
  type        = string
  default     = "CLUSTER_MULTI_AZ"

  validation {
    condition     = contains(["CLUSTER_MULTI_AZ", "SINGLE_INSTANCE"], var.mq_deployment_mode)
    error_message = "mq_deployment_mode must be CLUSTER_MULTI_AZ or SINGLE_INSTANCE."
  }
}

variable "broker_username" {
  description = "The user the fleet connects to a managed broker as: Amazon MQ's application user (not an administrator; created once by the administrator, see README) and MSK's SCRAM user (msk_auth = \"scram\"). Its password is generated once, kept in Secrets Manager (output broker_password_secret_arn) and given to the workers and the autoscaler as a file (FLEET_BROKER_PASSWORD_FILE), never in the broker URL."
  type        = string
  default     = "fleet"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", var.broker_username))
    error_message = "broker_username: letters, digits, '_', '.' and '-', starting with a letter or digit."
  }
}

variable "mq_admin_username" {
  description = "Amazon MQ for RabbitMQ administrator, the one user Amazon MQ creates (its password is generated and kept in Secrets Manager, output broker_admin_secret_arn). The fleet never uses it: the administrator creates broker_username with the fleet's permissions only (README)."
  type        = string
  default     = "admin"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{1,99}$", var.mq_admin_username))
    error_message = "mq_admin_username: 2-100 letters, digits, '_', '.' and '-', starting with a letter or digit."
  }

  validation {
    condition     = var.broker != "rabbitmq" || var.mq_admin_username != var.broker_username
    error_message = "broker_username is the fleet's own user, not the administrator (mq_admin_username): give them different names."
  }
}

variable "msk_kafka_version" {
  description = "Amazon MSK Apache Kafka version."
  type        = string
  default     = "3.6.0"
}

variable "msk_instance_type" {
  description = "Amazon MSK broker instance type."
  type        = string
  default     = "kafka.m5.large"
}

variable "msk_broker_nodes" {
  description = "Number of MSK brokers, a multiple of the number of private subnets. Null: one per private subnet."
  type        = number
  default     = null
}

variable "msk_auth" {
  description = "How the fleet's clients connect to MSK, and the URL the fleet is given: \"iam\" (TLS and IAM access control on 9098, kafka+sasl+ssl:// with sasl_mechanism=AWS_MSK_IAM; the instance roles get kafka-cluster actions on the fleet's topics and groups only), \"scram\" (TLS and SASL/SCRAM-SHA-512 on 9096 as broker_username, its password in a Secrets Manager secret MSK reads), \"tls\" (TLS on 9094, no client authentication: anything the security group admits may read and write every topic) or \"plaintext\" (9092). WARNING: \"plaintext\" turns off encryption and authentication between clients and brokers, so requests, replies and every topic travel readable and writable by anything that reaches the port; it is never a default, only an explicit opt-in for a network you trust, and plan warns while it is set."
  type        = string
  default     = "iam"

  validation {
    condition     = contains(["iam", "scram", "tls", "plaintext"], var.msk_auth)
    error_message = "msk_auth must be \"iam\", \"scram\", \"tls\" or \"plaintext\" (no encryption, no authentication: an explicit opt-in)."
  }
}

variable "msk_volume_size_gb" {
  description = "EBS storage per MSK broker, in GiB."
  type        = number
  default     = 100
}
