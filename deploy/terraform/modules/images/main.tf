# Where the images come from. Two private ECR repositories (create_repositories):
# <name>/worker for the GPU image and <name>/cpu for the CPU image the autoscaler
# runs. Output pull_arns: these, any ECR repository that one of var.images
# names, and var.repository_arns; the instance roles may pull from them, so an
# image in ECR never meets a registry login the role may not make.

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition

  ecr_repositories = var.create_repositories ? {
    worker = "${var.name}/worker"
    cpu    = "${var.name}/cpu"
  } : {}

  # 123456789012.dkr.ecr.us-east-1.amazonaws.com/path/name:tag -> its repository's ARN
  ecr_image_pattern = "^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(\\.cn)?/([^:@]+)"
  image_ecr_arns = [
    for image in var.images :
    format(
      "arn:%s:ecr:%s:%s:repository/%s",
      local.partition,
      regex(local.ecr_image_pattern, image)[1],
      regex(local.ecr_image_pattern, image)[0],
      regex(local.ecr_image_pattern, image)[3],
    )
    if can(regex(local.ecr_image_pattern, image))
  ]
  ecr_pull_arns = distinct(concat(
    [for repo in aws_ecr_repository.this : repo.arn],
    local.image_ecr_arns,
    var.repository_arns,
  ))
}

resource "aws_ecr_repository" "this" {
  for_each = local.ecr_repositories

  name                 = each.value
  image_tag_mutability = "IMMUTABLE"
  # Images are pushed by a release, not by Terraform: destroy removes them too.
  force_delete = true

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Expire untagged images after 14 days"
      selection = {
        tagStatus   = "untagged"
        countType   = "sinceImagePushed"
        countUnit   = "days"
        countNumber = 14
      }
      action = { type = "expire" }
    }]
  })
}
