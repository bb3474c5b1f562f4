output "repository_urls" {
  description = "The repositories created here: worker (the GPU image) and cpu (the CPU image)."
  value       = { for key, repo in aws_ecr_repository.this : key => repo.repository_url }
}

output "pull_arns" {
  description = "Every ECR repository the instances may pull from: those created here, those var.images name, and var.repository_arns."
  value       = local.ecr_pull_arns
}

output "image_arns" {
  description = "The ECR repositories var.images name."
  value       = local.image_ecr_arns
}

output "repositories" {
  description = "The repositories created here, by key (worker, cpu)."
  value       = aws_ecr_repository.this
}
