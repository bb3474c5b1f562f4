# State written before the modules: every resource moved into one, under the
# same name, so that `terraform plan` after an upgrade shows no replacement.
# Terraform applies these moves once; they can be dropped after every state
# has been planned or applied with them (they are harmless to keep).

# modules/network

moved {
  from = aws_vpc.this
  to   = module.network.aws_vpc.this
}

moved {
  from = aws_default_security_group.this
  to   = module.network.aws_default_security_group.this
}

moved {
  from = aws_internet_gateway.this
  to   = module.network.aws_internet_gateway.this
}

moved {
  from = aws_subnet.public
  to   = module.network.aws_subnet.public
}

moved {
  from = aws_subnet.private
  to   = module.network.aws_subnet.private
}

moved {
  from = aws_eip.nat
  to   = module.network.aws_eip.nat
}

moved {
  from = aws_nat_gateway.this
  to   = module.network.aws_nat_gateway.this
}

moved {
  from = aws_route_table.public
  to   = module.network.aws_route_table.public
}

moved {
  from = aws_route_table_association.public
  to   = module.network.aws_route_table_association.public
}

moved {
  from = aws_route_table.private
  to   = module.network.aws_route_table.private
}

moved {
  from = aws_route_table_association.private
  to   = module.network.aws_route_table_association.private
}

moved {
  from = aws_vpc_endpoint.s3
  to   = module.network.aws_vpc_endpoint.s3
}

moved {
  from = aws_cloudwatch_log_group.flow_logs
  to   = module.network.aws_cloudwatch_log_group.flow_logs
}

moved {
  from = aws_iam_role.flow_logs
  to   = module.network.aws_iam_role.flow_logs
}

moved {
  from = aws_iam_role_policy.flow_logs
  to   = module.network.aws_iam_role_policy.flow_logs
}

moved {
  from = aws_flow_log.this
  to   = module.network.aws_flow_log.this
}

moved {
  from = aws_security_group.alb
  to   = module.network.aws_security_group.alb
}

moved {
  from = aws_vpc_security_group_ingress_rule.alb_listener
  to   = module.network.aws_vpc_security_group_ingress_rule.alb_listener
}

moved {
  from = aws_vpc_security_group_egress_rule.alb_to_worker
  to   = module.network.aws_vpc_security_group_egress_rule.alb_to_worker
}

moved {
  from = aws_vpc_security_group_egress_rule.alb_to_worker_grpc
  to   = module.network.aws_vpc_security_group_egress_rule.alb_to_worker_grpc
}

moved {
  from = aws_security_group.worker
  to   = module.network.aws_security_group.worker
}

moved {
  from = aws_vpc_security_group_ingress_rule.worker_from_alb
  to   = module.network.aws_vpc_security_group_ingress_rule.worker_from_alb
}

moved {
  from = aws_vpc_security_group_ingress_rule.worker_grpc_from_alb
  to   = module.network.aws_vpc_security_group_ingress_rule.worker_grpc_from_alb
}

moved {
  from = aws_vpc_security_group_egress_rule.worker_https
  to   = module.network.aws_vpc_security_group_egress_rule.worker_https
}

moved {
  from = aws_security_group.autoscaler
  to   = module.network.aws_security_group.autoscaler
}

moved {
  from = aws_vpc_security_group_egress_rule.autoscaler_https
  to   = module.network.aws_vpc_security_group_egress_rule.autoscaler_https
}

moved {
  from = aws_vpc_security_group_ingress_rule.scrape
  to   = module.network.aws_vpc_security_group_ingress_rule.scrape
}

# modules/broker

moved {
  from = aws_secretsmanager_secret.mq
  to   = module.broker.aws_secretsmanager_secret.mq
}

moved {
  from = aws_secretsmanager_secret_version.mq
  to   = module.broker.aws_secretsmanager_secret_version.mq
}

moved {
  from = aws_secretsmanager_secret.mq_fleet
  to   = module.broker.aws_secretsmanager_secret.mq_fleet
}

moved {
  from = aws_secretsmanager_secret_version.mq_fleet
  to   = module.broker.aws_secretsmanager_secret_version.mq_fleet
}

moved {
  from = aws_cloudwatch_log_resource_policy.mq
  to   = module.broker.aws_cloudwatch_log_resource_policy.mq
}

moved {
  from = aws_mq_broker.this
  to   = module.broker.aws_mq_broker.this
}

moved {
  from = aws_cloudwatch_log_group.msk
  to   = module.broker.aws_cloudwatch_log_group.msk
}

moved {
  from = aws_msk_cluster.this
  to   = module.broker.aws_msk_cluster.this
}

moved {
  from = aws_secretsmanager_secret.msk_scram
  to   = module.broker.aws_secretsmanager_secret.msk_scram
}

moved {
  from = aws_secretsmanager_secret_version.msk_scram
  to   = module.broker.aws_secretsmanager_secret_version.msk_scram
}

moved {
  from = aws_msk_scram_secret_association.this
  to   = module.broker.aws_msk_scram_secret_association.this
}

moved {
  from = aws_security_group.broker
  to   = module.broker.aws_security_group.broker
}

moved {
  from = aws_vpc_security_group_ingress_rule.broker_from_clients
  to   = module.broker.aws_vpc_security_group_ingress_rule.broker_from_clients
}

moved {
  from = aws_vpc_security_group_ingress_rule.broker_from_producers
  to   = module.broker.aws_vpc_security_group_ingress_rule.broker_from_producers
}

moved {
  from = aws_vpc_security_group_egress_rule.clients_to_managed_broker
  to   = module.broker.aws_vpc_security_group_egress_rule.clients_to_managed_broker
}

moved {
  from = aws_vpc_security_group_egress_rule.clients_to_external_broker
  to   = module.broker.aws_vpc_security_group_egress_rule.clients_to_external_broker
}

# modules/images

moved {
  from = aws_ecr_repository.this
  to   = module.images.aws_ecr_repository.this
}

moved {
  from = aws_ecr_lifecycle_policy.this
  to   = module.images.aws_ecr_lifecycle_policy.this
}

# modules/worker_group

moved {
  from = aws_lb.this
  to   = module.worker_group.aws_lb.this
}

moved {
  from = aws_lb_target_group.worker
  to   = module.worker_group.aws_lb_target_group.worker
}

moved {
  from = aws_lb_target_group.grpc
  to   = module.worker_group.aws_lb_target_group.grpc
}

moved {
  from = aws_lb_listener.https
  to   = module.worker_group.aws_lb_listener.https
}

moved {
  from = aws_lb_listener.http
  to   = module.worker_group.aws_lb_listener.http
}

moved {
  from = aws_lb_listener_rule.oip
  to   = module.worker_group.aws_lb_listener_rule.oip
}

moved {
  from = aws_lb_listener_rule.grpc
  to   = module.worker_group.aws_lb_listener_rule.grpc
}

moved {
  from = aws_ssm_parameter.worker_env
  to   = module.worker_group.aws_ssm_parameter.worker_env
}

moved {
  from = aws_ssm_parameter.worker_broker_url
  to   = module.worker_group.aws_ssm_parameter.worker_broker_url
}

moved {
  from = aws_ssm_parameter.worker_broker_password
  to   = module.worker_group.aws_ssm_parameter.worker_broker_password
}

moved {
  from = aws_cloudwatch_dashboard.fleet
  to   = module.worker_group.aws_cloudwatch_dashboard.fleet
}

moved {
  from = aws_iam_role.worker
  to   = module.worker_group.aws_iam_role.worker
}

moved {
  from = aws_iam_instance_profile.worker
  to   = module.worker_group.aws_iam_instance_profile.worker
}

moved {
  from = aws_iam_role_policy.worker
  to   = module.worker_group.aws_iam_role_policy.worker
}

moved {
  from = aws_iam_role_policy_attachment.worker_ssm_core
  to   = module.worker_group.aws_iam_role_policy_attachment.worker_ssm_core
}

moved {
  from = aws_iam_role_policy.worker_kafka
  to   = module.worker_group.aws_iam_role_policy.worker_kafka
}

moved {
  from = aws_s3_bucket.jobs
  to   = module.worker_group.aws_s3_bucket.jobs
}

moved {
  from = aws_s3_bucket_ownership_controls.jobs
  to   = module.worker_group.aws_s3_bucket_ownership_controls.jobs
}

moved {
  from = aws_s3_bucket_public_access_block.jobs
  to   = module.worker_group.aws_s3_bucket_public_access_block.jobs
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.jobs
  to   = module.worker_group.aws_s3_bucket_server_side_encryption_configuration.jobs
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.jobs
  to   = module.worker_group.aws_s3_bucket_lifecycle_configuration.jobs
}

moved {
  from = aws_s3_bucket_policy.jobs
  to   = module.worker_group.aws_s3_bucket_policy.jobs
}

moved {
  from = aws_iam_role_policy.worker_jobs
  to   = module.worker_group.aws_iam_role_policy.worker_jobs
}

moved {
  from = aws_cloudwatch_log_group.worker
  to   = module.worker_group.aws_cloudwatch_log_group.worker
}

moved {
  from = aws_s3_bucket.models
  to   = module.worker_group.aws_s3_bucket.models
}

moved {
  from = aws_s3_bucket_ownership_controls.models
  to   = module.worker_group.aws_s3_bucket_ownership_controls.models
}

moved {
  from = aws_s3_bucket_public_access_block.models
  to   = module.worker_group.aws_s3_bucket_public_access_block.models
}

moved {
  from = aws_s3_bucket_versioning.models
  to   = module.worker_group.aws_s3_bucket_versioning.models
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.models
  to   = module.worker_group.aws_s3_bucket_server_side_encryption_configuration.models
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.models
  to   = module.worker_group.aws_s3_bucket_lifecycle_configuration.models
}

moved {
  from = aws_s3_bucket_policy.models
  to   = module.worker_group.aws_s3_bucket_policy.models
}

moved {
  from = aws_launch_template.worker
  to   = module.worker_group.aws_launch_template.worker
}

moved {
  from = aws_autoscaling_group.worker
  to   = module.worker_group.aws_autoscaling_group.worker
}

# modules/autoscaler

moved {
  from = aws_launch_template.autoscaler
  to   = module.autoscaler.aws_launch_template.autoscaler
}

moved {
  from = aws_autoscaling_group.autoscaler
  to   = module.autoscaler.aws_autoscaling_group.autoscaler
}

moved {
  from = aws_ssm_parameter.autoscaler_env
  to   = module.autoscaler.aws_ssm_parameter.autoscaler_env
}

moved {
  from = aws_ssm_parameter.autoscaler_broker_password
  to   = module.autoscaler.aws_ssm_parameter.autoscaler_broker_password
}

moved {
  from = aws_ssm_parameter.autoscaler_config
  to   = module.autoscaler.aws_ssm_parameter.autoscaler_config
}

moved {
  from = aws_iam_role.autoscaler
  to   = module.autoscaler.aws_iam_role.autoscaler
}

moved {
  from = aws_iam_instance_profile.autoscaler
  to   = module.autoscaler.aws_iam_instance_profile.autoscaler
}

moved {
  from = aws_iam_role_policy.autoscaler
  to   = module.autoscaler.aws_iam_role_policy.autoscaler
}

moved {
  from = aws_iam_role_policy_attachment.autoscaler_ssm_core
  to   = module.autoscaler.aws_iam_role_policy_attachment.autoscaler_ssm_core
}

moved {
  from = aws_iam_role_policy.autoscaler_kafka
  to   = module.autoscaler.aws_iam_role_policy.autoscaler_kafka
}

moved {
  from = aws_cloudwatch_log_group.autoscaler
  to   = module.autoscaler.aws_cloudwatch_log_group.autoscaler
}
