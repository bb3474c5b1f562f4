variable "name" {
  description = "Name of the deployment: a prefix for every resource."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the secrets, the MSK log group and MSK's storage."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the MSK broker log group, in days."
  type        = number
}

variable "vpc_id" {
  description = "VPC of the broker's security group."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets a managed broker is placed in."
  type        = list(string)
}

variable "worker_security_group_id" {
  description = "Security group of the workers: they reach the broker's ports."
  type        = string
}

variable "autoscaler_security_group_id" {
  description = "Security group of the autoscaler: it reaches the broker's ports."
  type        = string
}

variable "broker" {
  description = "\"external\" (broker_url, nothing created), \"rabbitmq\" (Amazon MQ for RabbitMQ) or \"kafka\" (Amazon MSK)."
  type        = string
  default     = "external"

  validation {
    condition     = contains(["external", "rabbitmq", "kafka"], var.broker)
    error_message = "broker must be \"external\", \"rabbitmq\" or \"kafka\"."
  }
}

variable "broker_url" {
  description = "With broker = \"external\": the broker URL, passed on as output url."
  type        = string
  default     = null
  sensitive   = true
}

variable "external_broker_cidrs" {
  description = "With broker = \"external\": CIDR blocks the workers and the autoscaler may reach the broker in."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "external_broker_ports" {
  description = "With broker = \"external\": the broker's ports."
  type        = list(number)
  default     = [5671, 5672, 9092, 9093, 9094, 9096, 9098, 15671, 15672]
}

variable "broker_client_cidrs" {
  description = "With a managed broker: CIDR blocks of the producers that may reach its ports."
  type        = list(string)
  default     = []
}

variable "broker_client_security_group_ids" {
  description = "With a managed broker: security groups of the producers that may reach its ports."
  type        = list(string)
  default     = []
}

variable "broker_username" {
  description = "The user the fleet connects to a managed broker as (Amazon MQ's application user, MSK's SCRAM user)."
  type        = string
  default     = "fleet"
}

variable "mq_admin_username" {
  description = "Amazon MQ for RabbitMQ administrator, the one user Amazon MQ creates; never the fleet's user."
  type        = string
  default     = "admin"
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
  description = "Amazon MQ deployment: CLUSTER_MULTI_AZ or SINGLE_INSTANCE."
  type        = string
  default     = "CLUSTER_MULTI_AZ"
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
  description = "MSK client authentication: \"iam\", \"scram\", \"tls\" or \"plaintext\"."
  type        = string
  default     = "iam"

  validation {
    condition     = contains(["iam", "scram", "tls", "plaintext"], var.msk_auth)
    error_message = "msk_auth must be \"iam\", \"scram\", \"tls\" or \"plaintext\"."
  }
}

variable "msk_volume_size_gb" {
  description = "EBS storage per MSK broker, in GiB."
  type        = number
  default     = 100
}

variable "models" {
  description = "Names of the models the fleet serves: their topics and groups in the Kafka policies."
  type        = list(string)
}

variable "job_notify" {
  description = "The topic of finished jobs' notifications the workers may write (Kafka policies); null: none."
  type        = string
  default     = null
}
