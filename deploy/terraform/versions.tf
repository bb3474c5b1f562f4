terraform {
  # 1.7 brings mock providers for `terraform test`; 1.9 cross-variable validation.
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
}
