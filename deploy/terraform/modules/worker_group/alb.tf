# Application load balancer in front of the workers' Open Inference Protocol
# (KServe v2). Its listener forwards /v2 and /v2/* to the workers' OIP REST
# port (worker_oip_port) and answers everything else 404: the workers'
# /healthz, /readyz and /metrics (worker_http_port) are not reachable through
# it. With alb_grpc the HTTPS listener also forwards the OIP gRPC service
# (/inference.GRPCInferenceService/*) to the workers' gRPC port.
#
# The target group's health check is the worker's /v2/health/ready (200: its
# models are loaded and the inference path can serve), and the worker group
# uses it as its health check (health_check_type = "ELB"): an instance whose
# worker process is gone, hung or cannot serve is taken out of the target
# group and replaced. That check does not depend on the broker: /v2 requests
# reach the models without it, and a worker waiting for its broker can still
# serve them. A check that did (/readyz: broker connected) would replace every
# GPU instance of the group during a broker outage without bringing the broker
# back.

locals {
  # Must equal the path the worker's OIP server answers readiness on
  # (worker/oip_http.py; tests/deploy checks it).
  worker_health_path = "/v2/health/ready"
  # The OIP gRPC service, and its readiness RPC as the gRPC health check.
  oip_grpc_service        = "inference.GRPCInferenceService"
  worker_grpc_health_path = "/${local.oip_grpc_service}/ServerReady"

  # The one listener there is: HTTPS with a certificate, plain HTTP without.
  alb_listener_arn = one(concat(aws_lb_listener.https[*].arn, aws_lb_listener.http[*].arn))

  # The listener's URL (outputs load_balancer_url, inference_url).
  alb_url = var.certificate_arn == null ? "http://${aws_lb.this.dns_name}:${var.alb_http_port}" : "https://${aws_lb.this.dns_name}"

  # What the listeners answer outside the forwarded paths.
  alb_not_found = jsonencode({ error = "not found" })
}

resource "aws_lb" "this" {
  name                       = "${var.name}-alb"
  load_balancer_type         = "application"
  internal                   = var.alb_internal
  subnets                    = var.alb_subnet_ids
  security_groups            = [var.alb_security_group_id]
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
      condition     = length(var.alb_subnet_ids) >= 2
      error_message = "The load balancer needs at least two subnets (public_subnet_ids when alb_internal = false)."
    }
  }
}

resource "aws_lb_target_group" "worker" {
  name_prefix          = "oip-"
  port                 = var.worker_oip_port
  protocol             = "HTTP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
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

# The Open Inference Protocol over gRPC (alb_grpc): HTTP/2 to the workers'
# gRPC port, health-checked with the ServerReady RPC (gRPC status 0: OK). The
# load balancer sees the status only, not the answer's `ready` field: this
# check says the gRPC server answers; readiness is the REST target group's.
resource "aws_lb_target_group" "grpc" {
  count = var.alb_grpc ? 1 : 0

  name_prefix          = "grpc-"
  port                 = var.worker_grpc_port
  protocol             = "HTTP"
  protocol_version     = "GRPC"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = local.worker_grpc_health_path
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "0"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = var.certificate_arn != null
      error_message = "alb_grpc = true needs certificate_arn: an application load balancer forwards gRPC only from an HTTPS listener."
    }
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
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = local.alb_not_found
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener" "http" {
  count = var.certificate_arn == null ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = var.alb_http_port
  protocol          = "HTTP"

  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      message_body = local.alb_not_found
      status_code  = "404"
    }
  }
}

# The Open Inference Protocol's REST API: /v2 (server metadata) and below it.
resource "aws_lb_listener_rule" "oip" {
  listener_arn = local.alb_listener_arn
  priority     = 100

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.worker.arn
  }

  condition {
    path_pattern {
      values = ["/v2", "/v2/*"]
    }
  }
}

# The Open Inference Protocol's gRPC service (alb_grpc, HTTPS listener only).
resource "aws_lb_listener_rule" "grpc" {
  count = var.alb_grpc ? 1 : 0

  listener_arn = one(aws_lb_listener.https[*].arn)
  priority     = 110

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.grpc[0].arn
  }

  condition {
    path_pattern {
      values = ["/${local.oip_grpc_service}/*"]
    }
  }
}
