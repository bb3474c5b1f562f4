output "url" {
  description = "The broker URL the workers and the autoscaler are given (FLEET_BROKER_URL): broker_url, or the managed broker's, without a password."
  value       = local.broker_url
  sensitive   = true
}

output "client_url" {
  description = "The managed broker's URL (no password in it); null with an external broker."
  value = {
    external = null
    rabbitmq = local.mq_url
    kafka    = local.msk_url
  }[var.broker]
}

output "endpoint" {
  description = "Endpoint of the managed broker (without credentials); null with an external broker."
  value       = local.broker_endpoint
}

output "management_url" {
  description = "Amazon MQ: the RabbitMQ management API (its console URL); null otherwise."
  value       = local.mq_management_url
}

output "password_file" {
  description = "Whether the clients get broker_username's password as a file (Amazon MQ, MSK with SCRAM)."
  value       = local.broker_password_file
}

output "password" {
  description = "The password of broker_username where password_file is true; null otherwise."
  value       = local.broker_password
  sensitive   = true
}

output "password_secret_arn" {
  description = "Secrets Manager secret with the password of broker_username; null where there is none."
  value       = local.broker_password_secret_arn
}

output "admin_secret_arn" {
  description = "Amazon MQ: the secret with the administrator's password; null otherwise."
  value       = var.broker == "rabbitmq" ? aws_secretsmanager_secret.mq[0].arn : null
}

output "security_group_id" {
  description = "Security group of the managed broker; null with an external broker."
  value       = var.broker == "external" ? null : aws_security_group.broker[0].id
}

output "msk_iam" {
  description = "Whether MSK uses IAM access control: the roles then attach the Kafka policies."
  value       = local.msk_iam
}

output "worker_kafka_policy_json" {
  description = "MSK with IAM access control: the workers' kafka-cluster permissions; null otherwise."
  value       = local.msk_iam ? data.aws_iam_policy_document.worker_kafka[0].json : null
}

output "autoscaler_kafka_policy_json" {
  description = "MSK with IAM access control: the autoscaler's kafka-cluster permissions; null otherwise."
  value       = local.msk_iam ? data.aws_iam_policy_document.autoscaler_kafka[0].json : null
}

output "producer_kafka_policy_json" {
  description = "MSK with IAM access control: a producer's kafka-cluster permissions; null otherwise."
  value       = local.msk_iam ? data.aws_iam_policy_document.producer_kafka[0].json : null
}

# The resources themselves, for composition and for `terraform test`.

output "mq_broker" {
  description = "The Amazon MQ broker (a list of zero or one)."
  value       = aws_mq_broker.this
  sensitive   = true
}

output "msk_cluster" {
  description = "The MSK cluster (a list of zero or one)."
  value       = aws_msk_cluster.this
}

output "secrets" {
  description = "The secrets created here: mq (administrator), mq_fleet (application user), msk_scram (lists of zero or one)."
  value = {
    mq        = aws_secretsmanager_secret.mq
    mq_fleet  = aws_secretsmanager_secret.mq_fleet
    msk_scram = aws_secretsmanager_secret.msk_scram
  }
}

output "secret_versions" {
  description = "The secrets' versions: mq, mq_fleet, msk_scram (lists of zero or one)."
  value = {
    mq        = aws_secretsmanager_secret_version.mq
    mq_fleet  = aws_secretsmanager_secret_version.mq_fleet
    msk_scram = aws_secretsmanager_secret_version.msk_scram
  }
  sensitive = true
}

output "msk_scram_secret_association" {
  description = "The SCRAM secret's association with the cluster (a list of zero or one)."
  value       = aws_msk_scram_secret_association.this
}

output "security_group_rules" {
  description = "The rules towards the broker, by name."
  value = {
    broker_from_clients        = aws_vpc_security_group_ingress_rule.broker_from_clients
    broker_from_producers      = aws_vpc_security_group_ingress_rule.broker_from_producers
    clients_to_managed_broker  = aws_vpc_security_group_egress_rule.clients_to_managed_broker
    clients_to_external_broker = aws_vpc_security_group_egress_rule.clients_to_external_broker
  }
}

output "kafka_policy_documents" {
  description = "The Kafka policy documents: worker, autoscaler, producer (lists of zero or one)."
  value = {
    worker     = data.aws_iam_policy_document.worker_kafka
    autoscaler = data.aws_iam_policy_document.autoscaler_kafka
    producer   = data.aws_iam_policy_document.producer_kafka
  }
}
