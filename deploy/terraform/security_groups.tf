# One security group per role. Nothing is open unless it is used:
#   load balancer  <- listener port from alb_ingress_cidrs
#                  -> the workers' OIP port (and gRPC port with alb_grpc)
#   workers        <- OIP port (and gRPC port with alb_grpc) from the load balancer;
#                     HTTP port (/healthz, /readyz, /metrics) from
#                     metrics_scrape_cidrs only, never from the load balancer
#                  -> HTTPS (AWS APIs, S3, image registry), the broker's ports
#   autoscaler     <- metrics port from metrics_scrape_cidrs only
#                  -> HTTPS (Auto Scaling API, SSM, registry), the broker's ports
#   managed broker <- its ports from the workers and the autoscaler, and from
#                     broker_client_cidrs / broker_client_security_group_ids
#                     (the producers)
#
# The "HTTP port" in the groups' own descriptions is the OIP REST port (HTTP
# too); they stay worded as they are because a changed description replaces a
# security group, which the running instances and the load balancer still hold.

locals {
  alb_ingress_cidrs = length(var.alb_ingress_cidrs) > 0 ? var.alb_ingress_cidrs : [local.vpc_cidr]
  alb_listener_port = var.certificate_arn == null ? var.alb_http_port : 443

  # Ports the clients of the broker (workers, autoscaler) reach it on.
  managed_broker_ports = {
    rabbitmq = [5671, 443] # AMQPS, management API over HTTPS
    # MSK: the one port of the client authentication in use (IAM 9098,
    # SCRAM 9096, TLS 9094, plaintext 9092).
    kafka = [local.msk_mode.port]
  }
  broker_ports = var.broker == "external" ? var.external_broker_ports : local.managed_broker_ports[var.broker]

  # role x port, for the egress rules towards the broker
  broker_client_sgs = {
    worker     = aws_security_group.worker.id
    autoscaler = aws_security_group.autoscaler.id
  }
  broker_client_rules = {
    for pair in setproduct(keys(local.broker_client_sgs), local.broker_ports) :
    "${pair[0]}-${pair[1]}" => { role = pair[0], port = pair[1] }
  }
  external_broker_rules = var.broker != "external" ? {} : {
    for pair in setproduct(keys(local.broker_client_rules), var.external_broker_cidrs) :
    "${pair[0]}-${pair[1]}" => merge(local.broker_client_rules[pair[0]], { cidr = pair[1] })
  }
  # Producers' access to a managed broker: index-keyed, so that security
  # groups created in the same apply (unknown until then) can be listed.
  broker_producer_rules = var.broker == "external" ? {} : merge(
    {
      for pair in setproduct(var.broker_client_cidrs, local.broker_ports) :
      "cidr-${pair[0]}-${pair[1]}" => { cidr = pair[0], sg = null, port = pair[1] }
    },
    {
      for pair in setproduct(range(length(var.broker_client_security_group_ids)), local.broker_ports) :
      "sg${pair[0]}-${pair[1]}" => { cidr = null, sg = var.broker_client_security_group_ids[pair[0]], port = pair[1] }
    },
  )
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

# ---------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------

resource "aws_security_group" "broker" {
  count = var.broker == "external" ? 0 : 1

  name_prefix = "${var.name}-broker-"
  description = "${var.name} managed broker: its ports from the workers and the autoscaler"
  vpc_id      = local.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "broker_from_clients" {
  for_each = var.broker == "external" ? {} : local.broker_client_rules

  security_group_id            = aws_security_group.broker[0].id
  description                  = "Broker port ${each.value.port} from the ${each.value.role}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = local.broker_client_sgs[each.value.role]
}

resource "aws_vpc_security_group_ingress_rule" "broker_from_producers" {
  for_each = local.broker_producer_rules

  security_group_id            = aws_security_group.broker[0].id
  description                  = "Broker port ${each.value.port} from producers"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  cidr_ipv4                    = each.value.cidr
  referenced_security_group_id = each.value.sg
}

resource "aws_vpc_security_group_egress_rule" "clients_to_managed_broker" {
  for_each = var.broker == "external" ? {} : local.broker_client_rules

  security_group_id            = local.broker_client_sgs[each.value.role]
  description                  = "Broker port ${each.value.port}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.broker[0].id
}

resource "aws_vpc_security_group_egress_rule" "clients_to_external_broker" {
  for_each = local.external_broker_rules

  security_group_id = local.broker_client_sgs[each.value.role]
  description       = "Broker port ${each.value.port}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}
