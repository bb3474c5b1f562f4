output "vpc_id" {
  description = "VPC the fleet runs in (created or given)."
  value       = local.vpc_id
}

output "vpc_cidr" {
  description = "CIDR block of the VPC."
  value       = local.vpc_cidr
}

output "private_subnet_ids" {
  description = "Private subnets: the worker and autoscaler groups, a managed broker, an internal load balancer."
  value       = local.private_subnet_ids
}

output "public_subnet_ids" {
  description = "Public subnets (created, or given with vpc_id)."
  value       = local.public_subnet_ids
}

output "alb_subnet_ids" {
  description = "Subnets of the load balancer: the private ones when alb_internal, else the public ones."
  value       = local.alb_subnet_ids
}

output "alb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "worker_security_group_id" {
  description = "Security group of the workers."
  value       = aws_security_group.worker.id
}

output "autoscaler_security_group_id" {
  description = "Security group of the autoscaler."
  value       = aws_security_group.autoscaler.id
}

# The resources themselves, for composition and for `terraform test`.

output "vpc" {
  description = "The VPC created here (a list of zero or one)."
  value       = aws_vpc.this
}

output "private_subnets" {
  description = "The private subnets created here."
  value       = aws_subnet.private
}

output "nat_gateways" {
  description = "The NAT gateways created here."
  value       = aws_nat_gateway.this
}

output "security_group_rules" {
  description = "The rules of the load balancer's, the workers' and the autoscaler's groups, by name."
  value = {
    alb_listener         = aws_vpc_security_group_ingress_rule.alb_listener
    alb_to_worker        = aws_vpc_security_group_egress_rule.alb_to_worker
    alb_to_worker_grpc   = aws_vpc_security_group_egress_rule.alb_to_worker_grpc
    worker_from_alb      = aws_vpc_security_group_ingress_rule.worker_from_alb
    worker_grpc_from_alb = aws_vpc_security_group_ingress_rule.worker_grpc_from_alb
    worker_https         = aws_vpc_security_group_egress_rule.worker_https
    autoscaler_https     = aws_vpc_security_group_egress_rule.autoscaler_https
    scrape               = aws_vpc_security_group_ingress_rule.scrape
  }
}
