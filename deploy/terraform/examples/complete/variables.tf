variable "name" {
  description = "Name of the deployment: a prefix for every resource."
  type        = string
  default     = "fleet-prod"
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "The existing VPC to deploy into."
  type        = string
}

variable "private_subnet_ids" {
  description = "Its private subnets (at least two, in different availability zones), with a NAT gateway or VPC endpoints."
  type        = list(string)
}

variable "worker_image" {
  description = "The GPU image, with a tag or digest."
  type        = string
}

variable "autoscaler_image" {
  description = "The CPU image, with a tag or digest."
  type        = string
}

variable "ecr_repository_arns" {
  description = "More ECR repositories the instances may pull from (e.g. a release account's)."
  type        = list(string)
  default     = []
}

variable "ebs_kms_key_arn" {
  description = "KMS key of the instances' root volumes; null: the account's default EBS key."
  type        = string
  default     = null
}

variable "models" {
  description = "Names of the models the fleet serves."
  type        = list(string)
}

variable "models_bucket" {
  description = "The bucket holding the model repository; null: one is created."
  type        = string
  default     = null
}

variable "models_kms_key_arn" {
  description = "KMS key the model objects are encrypted with, if any."
  type        = string
  default     = null
}

variable "certificate_arn" {
  description = "ACM certificate of the load balancer's HTTPS listener."
  type        = string
}

variable "alb_access_logs_bucket" {
  description = "Bucket of the load balancer's access logs."
  type        = string
}

variable "client_cidrs" {
  description = "Networks of the clients: they reach the load balancer and, as producers, the broker."
  type        = list(string)
}

variable "metrics_scrape_cidrs" {
  description = "Networks of the Prometheus that scrapes the instances."
  type        = list(string)
  default     = []
}
