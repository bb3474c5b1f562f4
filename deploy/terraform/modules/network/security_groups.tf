# One security group per role. Nothing is open unless it is used:
#   load balancer  <- listener port from alb_ingress_cidrs
#                  -> the workers' OIP port (and gRPC port with alb_grpc)
#   workers        <- OIP port (and gRPC port with alb_grpc) from the load balancer;
#                     HTTP port (/healthz, /readyz, /metrics) from
#                     metrics_scrape_cidrs only, never from the load balancer
#                  -> HTTPS (AWS APIs, S3, image registry), and the broker's
#                     ports (rules of the broker module)
#   autoscaler     <- metrics port from metrics_scrape_cidrs only
#                  -> HTTPS (Auto Scaling API, SSM, registry), and the broker's
#                     ports (rules of the broker module)
# The managed broker's own group, and every rule towards a broker, belong to
# the broker module.
#
# The "HTTP port" in the groups' own descriptions is the OIP REST port (HTTP
# too); they stay worded as they are because a changed description replaces a
# security group, which the running instances and the load balancer still hold.

locals {
  alb_ingress_cidrs = length(var.alb_ingress_cidrs) > 0 ? var.alb_ingress_cidrs : [local.vpc_cidr]
  alb_listener_port = var.certificate_arn == null ? var.alb_http_port : 443

  scrape_rules = {
    for pair in setproduct(["worker", "autoscaler"], var.metrics_scrape_cidrs) :
    "${pair[0]}-${pair[1]}" => { role = pair[0], cidr = pair[1] }
  }
}

# ---------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------

resource "aws_security_group" "alb" {
  name_prefix = "${var.name}-alb-"
  description = "${var.name} load balancer: listener in, worker HTTP port out"
  vpc_id      = local.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "alb_listener" {
  for_each = toset(local.alb_ingress_cidrs)

  security_group_id = aws_security_group.alb.id
  description       = "Listener"
  ip_protocol       = "tcp"
  from_port         = local.alb_listener_port
  to_port           = local.alb_listener_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "alb_to_worker" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Worker OIP port (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.worker_oip_port
  to_port                      = var.worker_oip_port
  referenced_security_group_id = aws_security_group.worker.id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_worker_grpc" {
  count = var.alb_grpc ? 1 : 0

  security_group_id            = aws_security_group.alb.id
  description                  = "Worker OIP gRPC port (traffic and health checks)"
  ip_protocol                  = "tcp"
  from_port                    = var.worker_grpc_port
  to_port                      = var.worker_grpc_port
  referenced_security_group_id = aws_security_group.worker.id
}

# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------

resource "aws_security_group" "worker" {
  name_prefix = "${var.name}-worker-"
  description = "${var.name} workers: HTTP port from the load balancer; HTTPS and the broker out"
  vpc_id      = local.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_alb" {
  security_group_id            = aws_security_group.worker.id
  description                  = "OIP port from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.worker_oip_port
  to_port                      = var.worker_oip_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "worker_grpc_from_alb" {
  count = var.alb_grpc ? 1 : 0

  security_group_id            = aws_security_group.worker.id
  description                  = "OIP gRPC port from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = var.worker_grpc_port
  to_port                      = var.worker_grpc_port
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_egress_rule" "worker_https" {
  security_group_id = aws_security_group.worker.id
  description       = "HTTPS: AWS APIs, S3, the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---------------------------------------------------------------------------
# Autoscaler
# ---------------------------------------------------------------------------

resource "aws_security_group" "autoscaler" {
  name_prefix = "${var.name}-autoscaler-"
  description = "${var.name} autoscaler: no inbound except metrics scrapes; HTTPS and the broker out"
  vpc_id      = local.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "autoscaler_https" {
  security_group_id = aws_security_group.autoscaler.id
  description       = "HTTPS: Auto Scaling, SSM, the image registry"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---------------------------------------------------------------------------
# Metrics scrapes (only when metrics_scrape_cidrs is set)
# ---------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "scrape" {
  for_each = local.scrape_rules

  security_group_id = each.value.role == "worker" ? aws_security_group.worker.id : aws_security_group.autoscaler.id
  description       = "Prometheus scrape of the ${each.value.role}"
  ip_protocol       = "tcp"
  from_port         = each.value.role == "worker" ? var.worker_http_port : var.autoscaler_metrics_port
  to_port           = each.value.role == "worker" ? var.worker_http_port : var.autoscaler_metrics_port
  cidr_ipv4         = each.value.cidr
}
