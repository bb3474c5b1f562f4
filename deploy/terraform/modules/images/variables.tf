variable "name" {
  description = "Name of the deployment: the repositories are <name>/worker and <name>/cpu."
  type        = string
}

variable "create_repositories" {
  description = "Create the two private ECR repositories (immutable tags, scanned on push, encrypted with kms_key_arn)."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "KMS key encrypting the repositories."
  type        = string
}

variable "images" {
  description = "The image references the instances run: those in ECR are added to pull_arns."
  type        = list(string)
  default     = []
}

variable "repository_arns" {
  description = "More ECR repositories the instances may pull from."
  type        = list(string)
  default     = []
}
