variable "name" {
  description = "Name of the deployment: a prefix for every resource."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the flow log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the flow log group, in days."
  type        = number
}

variable "vpc_id" {
  description = "An existing VPC to use. Null: a new VPC is created (vpc_cidr, az_count)."
  type        = string
  default     = null
}

variable "private_subnet_ids" {
  description = "With vpc_id: its private subnets (at least two)."
  type        = list(string)
  default     = []
}

variable "public_subnet_ids" {
  description = "With vpc_id and alb_internal = false: its public subnets for the load balancer."
  type        = list(string)
  default     = []
}

variable "vpc_cidr" {
  description = "CIDR block of a new VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones a new VPC spans: one public and one private subnet in each."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count must be between 2 and 6."
  }
}

variable "single_nat_gateway" {
  description = "New VPC: one NAT gateway for all private subnets instead of one per availability zone."
  type        = bool
  default     = true
}

variable "enable_flow_logs" {
  description = "New VPC: record VPC flow logs to CloudWatch Logs."
  type        = bool
  default     = true
}

variable "alb_internal" {
  description = "The load balancer lives in the private subnets (true) or the public ones (false): output alb_subnet_ids."
  type        = bool
  default     = true
}

variable "alb_ingress_cidrs" {
  description = "CIDR blocks allowed to reach the load balancer listener. Empty: the VPC's CIDR block."
  type        = list(string)
  default     = []
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener (port 443); null: the HTTP listener on alb_http_port."
  type        = string
  default     = null
}

variable "alb_http_port" {
  description = "Port of the HTTP listener when certificate_arn is null."
  type        = number
  default     = 80
}

variable "alb_grpc" {
  description = "The load balancer also reaches the workers' OIP gRPC port."
  type        = bool
  default     = false
}

variable "worker_oip_port" {
  description = "The workers' Open Inference Protocol REST port (the load balancer's target)."
  type        = number
}

variable "worker_grpc_port" {
  description = "The workers' Open Inference Protocol gRPC port (with alb_grpc)."
  type        = number
}

variable "worker_http_port" {
  description = "The workers' health and metrics port: reachable from metrics_scrape_cidrs only."
  type        = number
}

variable "autoscaler_metrics_port" {
  description = "The autoscaler's metrics port: reachable from metrics_scrape_cidrs only."
  type        = number
}

variable "metrics_scrape_cidrs" {
  description = "CIDR blocks of a Prometheus scraping the workers and the autoscaler. Empty: no scrape port is opened."
  type        = list(string)
  default     = []
}
