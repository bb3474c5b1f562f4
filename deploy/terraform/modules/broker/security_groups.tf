# The managed broker's security group, and the rules that let the workers and
# the autoscaler (their groups are inputs) reach a broker:
#   managed broker <- its ports from the workers and the autoscaler, and from
#                     broker_client_cidrs / broker_client_security_group_ids
#                     (the producers)
#   workers, autoscaler -> the managed broker's group, or the external
#                     broker's ports in external_broker_cidrs

locals {
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
    worker     = var.worker_security_group_id
    autoscaler = var.autoscaler_security_group_id
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
}

resource "aws_security_group" "broker" {
  count = var.broker == "external" ? 0 : 1

  name_prefix = "${var.name}-broker-"
  description = "${var.name} managed broker: its ports from the workers and the autoscaler"
  vpc_id      = var.vpc_id

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
