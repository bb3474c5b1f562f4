variable "name" {
  description = "Name of the deployment: a prefix for every resource, SSM path and log group."
  type        = string
}

variable "tags" {
  description = "Tags of the instance and volume the group launches (the provider's default tags do not reach them)."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "KMS key encrypting the parameters and the log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the worker, autoscaler and VPC flow log groups, in days."
  type        = number
  default     = 365
}

variable "private_subnet_ids" {
  description = "Private subnets of the autoscaler's group of one."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the autoscaler."
  type        = string
}

variable "ecr_pull_arns" {
  description = "ECR repositories the autoscaler may pull from (the images module's pull_arns)."
  type        = list(string)
  default     = []
}

variable "worker_group_name" {
  description = "Name of the worker group the autoscaler drives (FLEET_ASG_NAME)."
  type        = string
}

variable "worker_group_arn" {
  description = "The worker group's ARN as IAM policies name it (the worker_group module's group_policy_arn): the only resource the autoscaler may set the capacity of."
  type        = string
}

variable "worker_min_size" {
  description = "Minimum number of in-service workers: the autoscaler's lower bound."
  type        = number
  default     = 0
}

variable "worker_max_size" {
  description = "Maximum number of in-service workers: the autoscaler's upper bound."
  type        = number
  default     = 8
}

variable "broker_url" {
  description = "The broker URL the autoscaler is given (in its TOML configuration; the broker module's url)."
  type        = string
  sensitive   = true
}

variable "broker_password_file" {
  description = "Give the autoscaler broker_password as a file (FLEET_BROKER_PASSWORD_FILE)."
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
  description = "MSK with IAM access control: attach kafka_policy_json to the autoscaler's role."
  type        = bool
  default     = false
}

variable "kafka_policy_json" {
  description = "The autoscaler's kafka-cluster permissions (the broker module's autoscaler_kafka_policy_json), with kafka_iam."
  type        = string
  default     = null
}

variable "autoscaler_image" {
  description = "Container image of the autoscaler: the CPU image (deploy/docker/Dockerfile.cpu), with an explicit tag or digest, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0. The GPU image would not fit the autoscaler's small instance."
  type        = string
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
}

variable "autoscaler_config" {
  description = "Autoscaler configuration (TOML, see deploy/autoscaler.example.toml), used verbatim: it must carry the broker URL itself. Null: templates/autoscaler.toml.tftpl rendered with this deployment's broker, models, group, region and capacity bounds."
  type        = string
  default     = null
  sensitive   = true
}

variable "autoscaler_warm_pool" {
  description = "The worker group's warm pool as the autoscaler keeps it: null leaves it as warm_pool_min_size made it; \"auto\" keeps the policy's next scale-out step ready (never below its size at start); a number keeps that many."
  type        = string
  default     = null
}

variable "autoscaler_env" {
  description = "Extra environment for the autoscaler container (its settings are in the TOML configuration). Stored as SecureString parameters under the autoscaler's path."
  type        = map(string)
  default     = {}
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the autoscaler publishes its metrics into every poll (DesiredCapacity, ScalingDecision, BacklogPerInstance, with the worker group's name as AutoScalingGroupName); its role may put metrics into this namespace only, and the dashboard shows them. Null: no CloudWatch metrics (the dashboard shows the group's own metrics)."
  type        = string
  default     = "Fleet"
}

variable "ebs_kms_key_arn" {
  description = "KMS key for the root volumes. Null uses the account's default EBS key (aws/ebs); a customer key must grant the Auto Scaling service-linked role."
  type        = string
  default     = null
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to both roles so operators can open Session Manager shells (no SSH port is opened either way)."
  type        = bool
  default     = false
}
