variable "name" {
  description = "Name of the deployment: a prefix for every resource, SSM path and log group."
  type        = string
}

variable "tags" {
  description = "Tags of the instances and volumes the group launches (the provider's default tags do not reach them)."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "KMS key encrypting the parameters, the log group, and the buckets created here."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the worker, autoscaler and VPC flow log groups, in days."
  type        = number
  default     = 365
}

variable "vpc_id" {
  description = "VPC of the target groups."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets of the worker group (at least two)."
  type        = list(string)
}

variable "alb_subnet_ids" {
  description = "Subnets of the load balancer (at least two)."
  type        = list(string)
}

variable "worker_security_group_id" {
  description = "Security group of the workers."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of the load balancer."
  type        = string
}

variable "ecr_pull_arns" {
  description = "ECR repositories the workers may pull from (the images module's pull_arns)."
  type        = list(string)
  default     = []
}

variable "broker_url" {
  description = "The broker URL the workers are given (FLEET_BROKER_URL; the broker module's url)."
  type        = string
  sensitive   = true
}

variable "broker_password_file" {
  description = "Give the workers broker_password as a file (FLEET_BROKER_PASSWORD_FILE)."
  type        = bool
  default     = false
}

variable "broker_password" {
  description = "The password of broker_username, with broker_password_file."
  type        = string
  default     = null
  sensitive   = true
}

variable "broker_username" {
  description = "The user the fleet connects to a managed broker as: Amazon MQ's application user (not an administrator; created once by the administrator, see README) and MSK's SCRAM user (msk_auth = \"scram\"). Its password is generated once, kept in Secrets Manager (output broker_password_secret_arn) and given to the workers and the autoscaler as a file (FLEET_BROKER_PASSWORD_FILE), never in the broker URL."
  type        = string
  default     = "fleet"
}

variable "kafka_iam" {
  description = "MSK with IAM access control: attach kafka_policy_json to the workers' role."
  type        = bool
  default     = false
}

variable "kafka_policy_json" {
  description = "The workers' kafka-cluster permissions (the broker module's worker_kafka_policy_json), with kafka_iam."
  type        = string
  default     = null
}

variable "worker_image" {
  description = "Container image of the worker (the GPU image, deploy/docker/Dockerfile) with an explicit tag or digest, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0 (output ecr_repository_urls). An ECR image is pulled with the instance role: its repository is granted automatically."
  type        = string
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
}

variable "worker_grpc_port" {
  description = "Port of the worker's Open Inference Protocol gRPC server (inference.GRPCInferenceService; FLEET_OIP_GRPC_PORT), served and behind the load balancer only with alb_grpc."
  type        = number
  default     = 8001
}

variable "drain_timeout_seconds" {
  description = "How long a leaving worker may drain before the termination lifecycle hook times out and the instance goes anyway."
  type        = number
  default     = 300
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
}

variable "job_notify" {
  description = "A topic exchange (RabbitMQ) or topic (Kafka) that gets a JSON message per finished job (FLEET_NOTIFY; fleet jobs watch reads it). Null: no notifications."
  type        = string
  default     = null
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
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to both roles so operators can open Session Manager shells (no SSH port is opened either way)."
  type        = bool
  default     = false
}

variable "alb_internal" {
  description = "Internal load balancer in the private subnets (true) or internet-facing in the public subnets (false)."
  type        = bool
  default     = true
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
