# Application load balancer in front of the workers' HTTP port. Its target
# group health check is the worker's liveness endpoint, and the worker group
# uses it as its health check (health_check_type = "ELB"): an instance whose
# worker process is gone or hung is replaced. Readiness (/readyz: models
# loaded and the broker connected) is not the check, because a worker waiting
# for its broker is alive; replacing it would not bring the broker back, and a
# broker outage would otherwise replace every GPU instance of the group.

locals {
  # Must equal the path the worker serves liveness on (tests/deploy checks it).
  worker_health_path = "/healthz"
}

resource "aws_lb" "this" {
  name                       = "${var.name}-alb"
  load_balancer_type         = "application"
  internal                   = var.alb_internal
  subnets                    = local.alb_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == null ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = "${var.name}-alb"
      enabled = true
    }
  }

  lifecycle {
    precondition {
      condition     = length(local.alb_subnet_ids) >= 2
      error_message = "The load balancer needs at least two subnets (public_subnet_ids when alb_internal = false)."
    }
  }
}

resource "aws_lb_target_group" "worker" {
  name_prefix          = "wrk-"
  port                 = var.worker_http_port
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = local.vpc_id
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = local.worker_health_path
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "https" {
  count = var.certificate_arn == null ? 0 : 1

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.worker.arn
  }
}

resource "aws_lb_listener" "http" {
  count = var.certificate_arn == null ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = var.alb_http_port
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.worker.arn
  }
}
