# `terraform test` with a mocked AWS provider: no credentials, no API calls.
# Run from deploy/terraform after `terraform init`.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "us-east-1" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b", "us-east-1c"] }
  }
  mock_data "aws_vpc" {
    defaults = { cidr_block = "10.1.0.0/16" }
  }
  mock_data "aws_ssm_parameter" {
    defaults = { insecure_value = "ami-0123456789abcdef0", value = "ami-0123456789abcdef0" }
  }
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0", root_device_name = "/dev/sda1" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "GeneratedPassword0123456789abcdef" }
  }
  # Attributes the provider validates as ARNs when other resources use them.
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/fleet-alb/0123456789abcdef" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/oip-0123/0123456789abcdef" }
  }
  mock_resource "aws_lb_listener" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/fleet-alb/0123456789abcdef/0123456789abcdef" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/fleet-role" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/fleet-profile" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/fleet/logs" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:fleet/rabbitmq-password-abcdef" }
  }
  mock_resource "aws_autoscaling_group" {
    defaults = { arn = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:00000000-0000-0000-0000-000000000000:autoScalingGroupName/fleet-worker" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
  }
  mock_resource "aws_mq_broker" {
    defaults = {
      instances = [{ console_url = "https://b-1.mq.us-east-1.amazonaws.com", ip_address = "", endpoints = ["amqps://b-1.mq.us-east-1.amazonaws.com:5671"] }]
    }
  }
  mock_resource "aws_msk_cluster" {
    defaults = {
      arn                          = "arn:aws:kafka:us-east-1:123456789012:cluster/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2"
      bootstrap_brokers            = "b-1.kafka.us-east-1.amazonaws.com:9092,b-2.kafka.us-east-1.amazonaws.com:9092"
      bootstrap_brokers_tls        = "b-1.kafka.us-east-1.amazonaws.com:9094,b-2.kafka.us-east-1.amazonaws.com:9094"
      bootstrap_brokers_sasl_scram = "b-1.kafka.us-east-1.amazonaws.com:9096,b-2.kafka.us-east-1.amazonaws.com:9096"
      bootstrap_brokers_sasl_iam   = "b-1.kafka.us-east-1.amazonaws.com:9098,b-2.kafka.us-east-1.amazonaws.com:9098"
    }
  }
}

variables {
  worker_image     = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0"
  autoscaler_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0"
  models_bucket    = "fleet-models"
  broker_url       = "amqps://fleet:not-a-real-password@broker.example.internal:5671/"
}

run "new_vpc_with_defaults" {
  command = apply

  assert {
    condition     = length(module.worker_group.autoscaling_group.vpc_zone_identifier) >= 2
    error_message = "The worker group must span at least two subnets."
  }
  assert {
    condition     = length(toset(module.network.private_subnets[*].availability_zone)) >= 2
    error_message = "The private subnets must lie in at least two availability zones."
  }
  assert {
    condition     = module.worker_group.launch_template.instance_type == "g5.xlarge"
    error_message = "The default worker instance type is g5.xlarge."
  }
  assert {
    condition     = module.worker_group.launch_template.metadata_options[0].http_tokens == "required"
    error_message = "The worker launch template must require IMDSv2."
  }
  assert {
    condition     = module.autoscaler.launch_template.metadata_options[0].http_tokens == "required"
    error_message = "The autoscaler launch template must require IMDSv2."
  }
  assert {
    condition     = alltrue([for b in module.worker_group.launch_template.block_device_mappings : b.ebs[0].encrypted == "true"])
    error_message = "The worker root volume must be encrypted."
  }
  assert {
    condition     = module.worker_group.launch_template.block_device_mappings[0].device_name == "/dev/sda1"
    error_message = "The encrypted volume must be the AMI's root device."
  }
  assert {
    condition     = module.worker_group.autoscaling_group.health_check_type == "ELB"
    error_message = "The worker group must use the load balancer's health checks."
  }
  assert {
    condition = (
      module.worker_group.target_groups.oip.port == 8000 &&
      module.worker_group.target_groups.oip.health_check[0].path == "/v2/health/ready" &&
      module.worker_group.target_groups.oip.health_check[0].port == "traffic-port" &&
      module.worker_group.target_groups.oip.health_check[0].matcher == "200"
    )
    error_message = "The target group is the workers' OIP port (worker_oip_port), checked on the OIP's /v2/health/ready for 200."
  }
  assert {
    condition = (
      module.worker_group.listeners.http[0].default_action[0].type == "fixed-response" &&
      module.worker_group.listeners.http[0].default_action[0].fixed_response[0].status_code == "404" &&
      module.worker_group.listeners.http[0].default_action[0].fixed_response[0].content_type == "application/json" &&
      module.worker_group.listeners.http[0].default_action[0].fixed_response[0].message_body == "{\"error\":\"not found\"}"
    )
    error_message = "The listener answers every path it does not forward with a JSON 404: /healthz, /readyz and /metrics are not reachable through it."
  }
  assert {
    condition = (
      module.worker_group.listener_rules.oip.listener_arn == module.worker_group.listeners.http[0].arn &&
      module.worker_group.listener_rules.oip.action[0].type == "forward" &&
      module.worker_group.listener_rules.oip.action[0].target_group_arn == module.worker_group.target_groups.oip.arn &&
      one(module.worker_group.listener_rules.oip.condition).path_pattern[0].values == toset(["/v2", "/v2/*"])
    )
    error_message = "The listener forwards /v2 and /v2/* to the workers' OIP target group."
  }
  assert {
    condition = (
      module.network.security_group_rules.alb_to_worker.from_port == 8000 && module.network.security_group_rules.alb_to_worker.to_port == 8000 &&
      module.network.security_group_rules.worker_from_alb.from_port == 8000 && module.network.security_group_rules.worker_from_alb.to_port == 8000 &&
      module.network.security_group_rules.worker_from_alb.referenced_security_group_id == module.network.alb_security_group_id &&
      length(module.network.security_group_rules.alb_to_worker_grpc) == 0 && length(module.network.security_group_rules.worker_grpc_from_alb) == 0
    )
    error_message = "The load balancer reaches the workers on the OIP port only, never on the metrics port."
  }
  assert {
    condition     = length(module.network.security_group_rules.scrape) == 0
    error_message = "Without metrics_scrape_cidrs nothing reaches the workers' metrics port."
  }
  assert {
    condition = (
      module.worker_group.parameters.env["FLEET_OIP_PORT"].value == "8000" &&
      module.worker_group.parameters.env["FLEET_OIP_HOST"].value == "0.0.0.0" &&
      !contains(keys(module.worker_group.parameters.env), "FLEET_OIP_GRPC_PORT") &&
      strcontains(base64decode(module.worker_group.launch_template.user_data), "OIP_PORT='8000'") &&
      strcontains(base64decode(module.worker_group.launch_template.user_data), "--oip-host 0.0.0.0 --oip-port \"$OIP_PORT\"")
    )
    error_message = "The workers serve the OIP on every address of the instance, on worker_oip_port; no gRPC without alb_grpc."
  }
  assert {
    condition     = length(module.worker_group.target_groups.grpc) == 0 && length(module.worker_group.listener_rules.grpc) == 0 && module.worker_group.autoscaling_group.target_group_arns == toset([module.worker_group.target_groups.oip.arn])
    error_message = "No gRPC target group or rule without alb_grpc; the group is attached to the OIP target group."
  }
  assert {
    condition     = output.inference_url == "http://${module.worker_group.load_balancer.dns_name}:80/v2" && output.grpc_endpoint == null && output.grpc_target_group_arn == null
    error_message = "inference_url is the listener's /v2; no gRPC endpoint without alb_grpc."
  }
  assert {
    condition     = module.worker_group.autoscaling_group.warm_pool[0].pool_state == "Stopped"
    error_message = "The warm pool must hold stopped instances."
  }
  assert {
    condition = anytrue([
      for h in module.worker_group.autoscaling_group.initial_lifecycle_hook :
      h.lifecycle_transition == "autoscaling:EC2_INSTANCE_TERMINATING" && h.name == output.termination_hook_name
    ])
    error_message = "The worker group must have the termination lifecycle hook the workers complete."
  }
  assert {
    condition     = !strcontains(base64decode(module.worker_group.launch_template.user_data), "not-a-real-password")
    error_message = "The broker URL must not be in user data."
  }
  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "/fleet/worker/env")
    error_message = "The user data reads the worker's SSM path."
  }
  assert {
    condition     = module.worker_group.parameters.broker_url.type == "SecureString"
    error_message = "The broker URL is a SecureString parameter."
  }
  assert {
    condition     = module.worker_group.parameters.env["FLEET_LIFECYCLE_HOOK"].value == output.termination_hook_name
    error_message = "The worker is told its termination hook."
  }
  assert {
    condition     = module.autoscaler.autoscaling_group.min_size == 1 && module.autoscaler.autoscaling_group.max_size == 1
    error_message = "The autoscaler runs in a group of exactly one."
  }
  assert {
    condition     = module.worker_group.load_balancer.internal && length(module.worker_group.listeners.http) == 1
    error_message = "Without a certificate the load balancer is internal with an HTTP listener."
  }
  assert {
    condition     = length(module.broker.mq_broker) == 0 && length(module.broker.msk_cluster) == 0
    error_message = "No managed broker with broker = \"external\"."
  }
  assert {
    condition     = module.worker_group.autoscaling_group.warm_pool[0].min_size == 1 && module.worker_group.autoscaling_group.warm_pool[0].max_group_prepared_capacity == 1
    error_message = "The warm pool holds exactly warm_pool_min_size (1) instances, not max_size - desired."
  }
  assert {
    condition     = output.security_group_ids.broker == null && output.worker_security_group_id == module.network.worker_security_group_id && output.alb_security_group_id == module.network.alb_security_group_id && output.autoscaler_security_group_id == module.network.autoscaler_security_group_id
    error_message = "Every security group is an output."
  }
  assert {
    condition     = output.load_balancer_arn == module.worker_group.load_balancer.arn
    error_message = "The load balancer is an output."
  }
  assert {
    condition     = !contains(keys(module.worker_group.parameters.env), "FLEET_METRICS_NAMESPACE")
    error_message = "The worker is given no setting it does not read."
  }
  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "cloudwatch_namespace = \"Fleet\"")
    error_message = "The autoscaler publishes its metrics into metrics_namespace."
  }
  assert {
    condition     = strcontains(base64decode(module.autoscaler.launch_template.user_data), "IMAGE='123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0'")
    error_message = "The autoscaler runs the CPU image."
  }
  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "REQUIRE_GPU='true'")
    error_message = "A g5 worker whose GPU cannot be used refuses to serve on its CPU."
  }
  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "FLEET_INSTANCE_ID=")
    error_message = "The worker's heartbeats name its instance (FLEET_INSTANCE_ID, from IMDS)."
  }
  assert {
    condition     = toset(keys(module.images.repositories)) == toset(["worker", "cpu"]) && module.images.repositories["worker"].image_tag_mutability == "IMMUTABLE"
    error_message = "Two ECR repositories, immutable tags."
  }
  assert {
    condition     = length(module.worker_group.models_bucket_resources.bucket) == 0 && module.worker_group.parameters.env["FLEET_MODELS"].value == "s3://fleet-models/models"
    error_message = "A given models bucket is used, none created."
  }
  assert {
    condition = toset(module.images.pull_arns) == toset([
      module.images.repositories["worker"].arn,
      module.images.repositories["cpu"].arn,
      "arn:aws:ecr:us-east-1:123456789012:repository/fleet/worker",
      "arn:aws:ecr:us-east-1:123456789012:repository/fleet/cpu",
    ])
    error_message = "The roles may pull from the created repositories and those the images name."
  }
}

run "models_bucket_created" {
  command = apply

  variables {
    models_bucket           = null
    create_ecr_repositories = false
    metrics_namespace       = null
  }

  assert {
    condition     = module.worker_group.models_bucket_resources.bucket[0].bucket == "fleet-models-123456789012-us-east-1" && output.models_uri == "s3://fleet-models-123456789012-us-east-1/models"
    error_message = "A models bucket is created and named in the outputs."
  }
  assert {
    condition     = module.worker_group.parameters.env["FLEET_MODELS"].value == output.models_uri
    error_message = "The workers load the created bucket."
  }
  assert {
    condition     = module.worker_group.models_bucket_resources.public_access_block[0].block_public_policy && module.worker_group.models_bucket_resources.versioning[0].versioning_configuration[0].status == "Enabled"
    error_message = "The models bucket is private and versioned."
  }
  assert {
    condition     = length(module.images.repositories) == 0 && length(module.images.pull_arns) == 2
    error_message = "Without created repositories the roles may still pull the images' own ECR repositories."
  }
  assert {
    condition     = !strcontains(nonsensitive(module.autoscaler.parameters.config.value), "cloudwatch_namespace")
    error_message = "metrics_namespace = null: no CloudWatch metrics."
  }
}

run "jobs_bucket_and_worker_settings" {
  command = apply

  variables {
    job_notify = "jobs-finished"
  }

  assert {
    condition     = output.jobs_results_url == "s3://fleet-jobs-123456789012-us-east-1/results" && output.jobs_payloads_url == "s3://fleet-jobs-123456789012-us-east-1/payloads"
    error_message = "A jobs bucket is created; its two stores are in the outputs."
  }
  assert {
    condition     = module.worker_group.parameters.env["FLEET_RESULTS"].value == output.jobs_results_url && module.worker_group.parameters.env["FLEET_PAYLOADS"].value == output.jobs_payloads_url && module.worker_group.parameters.env["FLEET_NOTIFY"].value == "jobs-finished"
    error_message = "The workers store jobs in the bucket, take payloads through it and notify job_notify."
  }
  assert {
    condition     = module.worker_group.jobs_bucket_resources.public_access_block[0].restrict_public_buckets && one(module.worker_group.jobs_bucket_resources.encryption[0].rule).apply_server_side_encryption_by_default[0].kms_master_key_id == aws_kms_key.fleet.arn
    error_message = "The jobs bucket is private and encrypted with the fleet key."
  }
  assert {
    condition     = one(module.worker_group.jobs_bucket_resources.lifecycle[0].rule).expiration[0].days == 2
    error_message = "Jobs and payloads expire after jobs_retention_days."
  }
  assert {
    condition     = length(module.worker_group.role_policies.jobs) == 1 && output.jobs_client_policy_json != null
    error_message = "The workers may use the bucket, and clients get a policy to attach."
  }
}

run "jobs_off" {
  command = plan

  variables {
    jobs = false
  }

  assert {
    condition     = length(module.worker_group.jobs_bucket_resources.bucket) == 0 && output.jobs_results_url == null && !contains(keys(module.worker_group.parameters.env), "FLEET_RESULTS")
    error_message = "jobs = false: no bucket and no result store for the workers."
  }
}

run "job_notify_refuses_the_fleets_names" {
  command = plan

  variables {
    job_notify = "fleet.heartbeats"
  }

  expect_failures = [var.job_notify]
}

run "image_needs_a_tag" {
  command = plan

  variables {
    worker_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker"
  }

  expect_failures = [var.worker_image]
}

run "image_from_a_registry_with_a_port_needs_a_tag" {
  command = plan

  variables {
    autoscaler_image = "registry.example.com:5000/fleet/cpu"
  }

  expect_failures = [var.autoscaler_image]
}

run "image_by_digest" {
  command = plan

  variables {
    worker_image = "registry.example.com:5000/fleet/worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  }

  assert {
    condition     = length(module.images.image_arns) == 1
    error_message = "An image outside ECR needs no ECR grant."
  }
}

run "existing_vpc" {
  command = plan

  variables {
    vpc_id             = "vpc-0123456789abcdef0"
    private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  }

  assert {
    condition     = length(module.network.vpc) == 0 && length(module.network.nat_gateways) == 0
    error_message = "No network is created in an existing VPC."
  }
  assert {
    condition     = module.worker_group.autoscaling_group.vpc_zone_identifier == toset(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"])
    error_message = "The worker group spans the given subnets."
  }
}

run "existing_vpc_needs_two_subnets" {
  command = plan

  variables {
    vpc_id             = "vpc-0123456789abcdef0"
    private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa"]
  }

  expect_failures = [var.private_subnet_ids]
}

run "new_vpc_needs_two_zones" {
  command = plan

  variables {
    az_count = 1
  }

  expect_failures = [var.az_count]
}

run "external_broker_needs_url" {
  command = plan

  variables {
    broker_url = null
  }

  expect_failures = [var.broker_url]
}

run "amazon_mq_for_rabbitmq" {
  command = apply

  variables {
    broker     = "rabbitmq"
    broker_url = null
  }

  assert {
    condition     = !module.broker.mq_broker[0].publicly_accessible && module.broker.mq_broker[0].engine_type == "RabbitMQ"
    error_message = "The Amazon MQ broker is private and runs RabbitMQ."
  }
  assert {
    condition     = nonsensitive(module.worker_group.parameters.broker_url.value) == "amqps://fleet@b-1.mq.us-east-1.amazonaws.com:5671?management_url=https%3A%2F%2Fb-1.mq.us-east-1.amazonaws.com"
    error_message = "The workers connect over AMQPS on 5671 as the application user, the password not in the URL, naming Amazon MQ's management API (its console URL), not port 15672."
  }
  assert {
    condition     = [for u in module.broker.mq_broker[0].user : u.username] == ["admin"] && var.broker_username == "fleet"
    error_message = "The user Amazon MQ creates is the administrator, not the user the fleet connects as."
  }
  assert {
    condition     = !strcontains(nonsensitive(module.worker_group.parameters.broker_url.value), "GeneratedPassword") && !strcontains(nonsensitive(module.autoscaler.parameters.config.value), "GeneratedPassword")
    error_message = "No password in the broker URL of the workers or the autoscaler."
  }
  assert {
    condition = (
      module.worker_group.parameters.broker_password[0].name == "/fleet/worker/files/FLEET_BROKER_PASSWORD_FILE" &&
      module.autoscaler.parameters.broker_password[0].name == "/fleet/autoscaler/files/FLEET_BROKER_PASSWORD_FILE" &&
      module.worker_group.parameters.broker_password[0].type == "SecureString" &&
      nonsensitive(module.worker_group.parameters.broker_password[0].value) == module.broker.secret_versions.mq_fleet[0].secret_string &&
      nonsensitive(module.autoscaler.parameters.broker_password[0].value) == module.broker.secret_versions.mq_fleet[0].secret_string
    )
    error_message = "The application user's password reaches the workers and the autoscaler as a file parameter (FLEET_BROKER_PASSWORD_FILE)."
  }
  assert {
    condition     = output.broker_password_secret_arn == module.broker.secrets.mq_fleet[0].arn && output.broker_admin_secret_arn == module.broker.secrets.mq[0].arn && output.broker_username == "fleet"
    error_message = "The application user's and the administrator's secrets are outputs of their own."
  }
  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "FILE_PARAMETER_PATH='/fleet/worker/files'") && strcontains(base64decode(module.autoscaler.launch_template.user_data), "FILE_PARAMETER_PATH='/fleet/autoscaler/files'")
    error_message = "Both boot scripts read their file parameters."
  }
  assert {
    condition     = !strcontains(base64decode(module.worker_group.launch_template.user_data), "GeneratedPassword") && !strcontains(base64decode(module.autoscaler.launch_template.user_data), "GeneratedPassword")
    error_message = "The broker password must not be in user data."
  }
  assert {
    condition     = length(module.broker.security_group_rules.clients_to_external_broker) == 0
    error_message = "With a managed broker the clients reach only its security group."
  }
  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "broker = \"amqps://fleet@b-1.mq.us-east-1.amazonaws.com:5671?management_url=https%3A%2F%2Fb-1.mq.")
    error_message = "The autoscaler reads queue statistics from Amazon MQ's management API."
  }
  assert {
    condition     = output.broker_management_url == "https://b-1.mq.us-east-1.amazonaws.com" && output.broker_endpoint == "amqps://b-1.mq.us-east-1.amazonaws.com:5671"
    error_message = "The broker's endpoint and management URL are outputs."
  }
  assert {
    condition     = toset([for r in module.broker.security_group_rules.broker_from_clients : r.from_port]) == toset([5671, 443])
    error_message = "The workers and the autoscaler reach AMQPS and the management API over HTTPS, nothing else."
  }
  assert {
    condition     = output.security_group_ids.broker == output.broker_security_group_id && output.broker_security_group_id != null
    error_message = "The broker's security group is an output."
  }
  assert {
    condition     = length(module.broker.security_group_rules.broker_from_producers) == 0
    error_message = "No producer is admitted unless listed."
  }
  assert {
    condition     = length(module.worker_group.role_policies.kafka) == 0 && output.kafka_producer_policy_json == null
    error_message = "No Kafka permissions without MSK."
  }
}

run "amazon_mq_fleet_user_is_not_the_administrator" {
  command = plan

  variables {
    broker            = "rabbitmq"
    broker_url        = null
    mq_admin_username = "fleet"
  }

  expect_failures = [var.mq_admin_username]
}

run "producers_reach_a_managed_broker" {
  command = plan

  variables {
    broker                           = "rabbitmq"
    broker_url                       = null
    broker_client_cidrs              = ["10.99.0.0/16"]
    broker_client_security_group_ids = ["sg-0123456789abcdef0"]
  }

  assert {
    condition = toset([for r in module.broker.security_group_rules.broker_from_producers : "${coalesce(r.cidr_ipv4, r.referenced_security_group_id)}:${r.from_port}"]) == toset([
      "10.99.0.0/16:5671", "10.99.0.0/16:443", "sg-0123456789abcdef0:5671", "sg-0123456789abcdef0:443",
    ])
    error_message = "Every producer CIDR and security group reaches AMQPS and the management API."
  }
}

run "producers_never_from_everywhere" {
  command = plan

  variables {
    broker              = "rabbitmq"
    broker_url          = null
    broker_client_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.broker_client_cidrs]
}

run "amazon_msk" {
  command = apply

  variables {
    broker     = "kafka"
    broker_url = null
  }

  assert {
    condition     = module.broker.msk_cluster[0].encryption_info[0].encryption_in_transit[0].in_cluster
    error_message = "MSK encrypts traffic between brokers."
  }
  assert {
    condition     = module.broker.msk_cluster[0].number_of_broker_nodes % length(module.broker.msk_cluster[0].broker_node_group_info[0].client_subnets) == 0
    error_message = "MSK brokers are a multiple of the client subnets."
  }
  assert {
    condition = (
      module.broker.msk_cluster[0].encryption_info[0].encryption_in_transit[0].client_broker == "TLS" &&
      !module.broker.msk_cluster[0].client_authentication[0].unauthenticated &&
      module.broker.msk_cluster[0].client_authentication[0].sasl[0].iam &&
      !module.broker.msk_cluster[0].client_authentication[0].sasl[0].scram
    )
    error_message = "By default MSK takes TLS clients with IAM access control only."
  }
  assert {
    condition     = nonsensitive(module.worker_group.parameters.broker_url.value) == "kafka+sasl+ssl://b-1.kafka.us-east-1.amazonaws.com:9098,b-2.kafka.us-east-1.amazonaws.com:9098/?sasl_mechanism=AWS_MSK_IAM&aws_region=us-east-1"
    error_message = "IAM: SASL over TLS on MSK's IAM port (9098), AWS_MSK_IAM, the region named."
  }
  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "broker = \"kafka+sasl+ssl://b-1.kafka.us-east-1.amazonaws.com:9098,")
    error_message = "The autoscaler's configuration points at MSK's IAM port."
  }
  assert {
    condition     = alltrue([for r in module.broker.security_group_rules.broker_from_clients : r.from_port == 9098]) && length(module.broker.security_group_rules.broker_from_clients) == 2
    error_message = "IAM: the broker opens 9098 to the workers and the autoscaler, and nothing else."
  }
  assert {
    condition     = length(module.worker_group.parameters.broker_password) == 0 && length(module.broker.secrets.msk_scram) == 0 && output.broker_password_secret_arn == null
    error_message = "IAM: no password anywhere."
  }
  assert {
    condition = alltrue(flatten([
      for doc in [module.broker.kafka_policy_documents.worker[0], module.broker.kafka_policy_documents.autoscaler[0], module.broker.kafka_policy_documents.producer[0]] : [
        for st in doc.statement : [
          for r in st.resources :
          r == module.broker.msk_cluster[0].arn ||
          startswith(r, "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.") ||
          startswith(r, "arn:aws:kafka:us-east-1:123456789012:group/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.")
        ]
      ]
    ]))
    error_message = "Every kafka-cluster permission is scoped to this cluster and to the fleet's topics and groups."
  }
  assert {
    condition = toset(flatten([for st in module.broker.kafka_policy_documents.worker[0].statement : st.resources if contains(st.actions, "kafka-cluster:ReadData")])) == toset([
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.online",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.batch",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.dead-letter",
    ])
    error_message = "The workers read the models' request topics, and the dead letters (jobs past the delivery limit end failed), only."
  }
  assert {
    condition = toset(flatten([for st in module.broker.kafka_policy_documents.worker[0].statement : st.resources if contains(st.actions, "kafka-cluster:AlterGroup")])) == toset([
      "arn:aws:kafka:us-east-1:123456789012:group/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.online",
      "arn:aws:kafka:us-east-1:123456789012:group/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.batch",
      "arn:aws:kafka:us-east-1:123456789012:group/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.dead-letter.jobs",
    ])
    error_message = "The workers join the models' consumer groups and the dead-letter tap's only."
  }
  assert {
    condition = toset(flatten([for st in module.broker.kafka_policy_documents.worker[0].statement : st.resources if contains(st.actions, "kafka-cluster:WriteData")])) == toset([
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.online",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.digits.batch",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.dead-letter",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.heartbeats",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.replies",
      "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.inbox.*",
    ])
    error_message = "The workers write the models' topics (retries), dead letters, heartbeats and replies, nothing else."
  }
  assert {
    condition = !anytrue(flatten([
      for doc in [module.broker.kafka_policy_documents.worker[0], module.broker.kafka_policy_documents.autoscaler[0]] :
      [for st in doc.statement : contains(st.actions, "kafka-cluster:DeleteTopic")]
    ]))
    error_message = "Neither role deletes topics (only a client deletes its own reply topic)."
  }
  assert {
    condition     = !anytrue([for st in module.broker.kafka_policy_documents.autoscaler[0].statement : contains(st.actions, "kafka-cluster:AlterGroup") || contains(st.actions, "kafka-cluster:WriteData")])
    error_message = "The autoscaler joins no group and writes nothing."
  }
  assert {
    condition     = anytrue([for st in module.broker.kafka_policy_documents.producer[0].statement : contains(st.actions, "kafka-cluster:DeleteTopic") && toset(st.resources) == toset(["arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/fleet.inbox.*"])])
    error_message = "A producer deletes its own reply topic on close, and no other."
  }
  assert {
    condition     = module.worker_group.role_policies.kafka[0].role == module.worker_group.role.id && module.autoscaler.role_policies.kafka[0].role == module.autoscaler.role.id && output.kafka_producer_policy_json != null
    error_message = "Both roles get their Kafka policy, and producers one to attach."
  }
}

run "msk_job_notifications" {
  command = plan

  variables {
    broker     = "kafka"
    broker_url = null
    job_notify = "jobs-finished"
  }

  assert {
    condition     = contains(flatten([for st in module.broker.kafka_policy_documents.worker[0].statement : st.resources if contains(st.actions, "kafka-cluster:WriteData")]), "arn:aws:kafka:us-east-1:123456789012:topic/fleet-kafka/abcd1234-abcd-dcba-4321-a1b2abcd9f9f-2/jobs-finished")
    error_message = "With job_notify the workers may write its topic."
  }
}

run "msk_scram" {
  command = apply

  variables {
    broker     = "kafka"
    broker_url = null
    msk_auth   = "scram"
  }

  assert {
    condition     = nonsensitive(module.worker_group.parameters.broker_url.value) == "kafka+sasl+ssl://fleet@b-1.kafka.us-east-1.amazonaws.com:9096,b-2.kafka.us-east-1.amazonaws.com:9096/?sasl_mechanism=SCRAM-SHA-512"
    error_message = "SCRAM: SASL over TLS on MSK's SCRAM port (9096) as broker_username, the password not in the URL."
  }
  assert {
    condition     = module.broker.msk_cluster[0].client_authentication[0].sasl[0].scram && !module.broker.msk_cluster[0].client_authentication[0].sasl[0].iam && !module.broker.msk_cluster[0].client_authentication[0].unauthenticated
    error_message = "SCRAM only."
  }
  assert {
    condition     = startswith(module.broker.secrets.msk_scram[0].name_prefix, "AmazonMSK_") && module.broker.secrets.msk_scram[0].kms_key_id == aws_kms_key.fleet.arn
    error_message = "MSK reads SCRAM secrets named AmazonMSK_* and encrypted with a customer managed key: the fleet key."
  }
  assert {
    condition     = jsondecode(module.broker.secret_versions.msk_scram[0].secret_string).username == "fleet" && module.broker.msk_scram_secret_association[0].secret_arn_list == toset([module.broker.secrets.msk_scram[0].arn]) && module.broker.msk_scram_secret_association[0].cluster_arn == module.broker.msk_cluster[0].arn
    error_message = "The SCRAM user's secret is associated with the cluster."
  }
  assert {
    condition = (
      nonsensitive(module.worker_group.parameters.broker_password[0].value) == "GeneratedPassword0123456789abcdef" &&
      nonsensitive(module.autoscaler.parameters.broker_password[0].value) == "GeneratedPassword0123456789abcdef" &&
      !strcontains(nonsensitive(module.autoscaler.parameters.config.value), "GeneratedPassword") &&
      !strcontains(base64decode(module.worker_group.launch_template.user_data), "GeneratedPassword")
    )
    error_message = "The SCRAM password reaches both roles as a file parameter only."
  }
  assert {
    condition     = output.broker_password_secret_arn == module.broker.secrets.msk_scram[0].arn && output.broker_username == "fleet"
    error_message = "The SCRAM secret is an output."
  }
  assert {
    condition     = alltrue([for r in module.broker.security_group_rules.broker_from_clients : r.from_port == 9096])
    error_message = "SCRAM: the broker opens 9096 only."
  }
  assert {
    condition     = length(module.worker_group.role_policies.kafka) == 0 && length(module.autoscaler.role_policies.kafka) == 0
    error_message = "SCRAM needs no kafka-cluster permissions."
  }
}

run "msk_tls_without_client_authentication" {
  command = plan

  variables {
    broker     = "kafka"
    broker_url = null
    msk_auth   = "tls"
  }

  assert {
    condition     = nonsensitive(module.worker_group.parameters.broker_url.value) == "kafka+ssl://b-1.kafka.us-east-1.amazonaws.com:9094,b-2.kafka.us-east-1.amazonaws.com:9094"
    error_message = "TLS: the fleet speaks TLS to the TLS port."
  }
  assert {
    condition     = alltrue([for r in module.broker.security_group_rules.broker_from_clients : r.from_port == 9094])
    error_message = "TLS: the broker opens 9094 only."
  }
}

run "msk_plaintext_is_an_opt_in_that_warns" {
  command = plan

  variables {
    broker     = "kafka"
    broker_url = null
    msk_auth   = "plaintext"
  }

  expect_failures = [check.msk_plaintext]

  assert {
    condition     = nonsensitive(module.worker_group.parameters.broker_url.value) == "kafka://b-1.kafka.us-east-1.amazonaws.com:9092,b-2.kafka.us-east-1.amazonaws.com:9092"
    error_message = "Plaintext: kafka:// on 9092."
  }
  assert {
    condition     = module.broker.msk_cluster[0].encryption_info[0].encryption_in_transit[0].client_broker == "PLAINTEXT" && alltrue([for r in module.broker.security_group_rules.broker_from_clients : r.from_port == 9092])
    error_message = "Plaintext: port 9092 only."
  }
}

run "msk_auth_is_one_of_four" {
  command = plan

  variables {
    broker     = "kafka"
    broker_url = null
    msk_auth   = "TLS_PLAINTEXT"
  }

  expect_failures = [var.msk_auth]
}

run "autoscaler_configuration" {
  command = apply

  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "group_name = \"fleet-worker\"")
    error_message = "The autoscaler drives this deployment's worker group."
  }
  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "kind = \"ec2\"")
    error_message = "The autoscaler uses the EC2 actuator."
  }
  assert {
    condition     = module.autoscaler.parameters.config.type == "SecureString"
    error_message = "The autoscaler configuration carries the broker URL: SecureString."
  }
  assert {
    condition = (
      strcontains(nonsensitive(module.autoscaler.parameters.config.value), "state_file = \"ssm:/fleet/autoscaler/policy-state\"") &&
      nonsensitive(module.autoscaler.parameters.policy_state.name) == "/fleet/autoscaler/policy-state" &&
      nonsensitive(module.autoscaler.parameters.policy_state.value) == "{}"
    )
    error_message = "The autoscaler keeps its policy state in an SSM parameter the deployment makes (and removes)."
  }
  assert {
    condition     = !strcontains(nonsensitive(module.autoscaler.parameters.config.value), "warm_pool")
    error_message = "Without autoscaler_warm_pool the warm pool is left as the group has it."
  }
  assert {
    condition     = !strcontains(base64decode(module.autoscaler.launch_template.user_data), "not-a-real-password")
    error_message = "The broker URL must not be in the autoscaler's user data."
  }
}

run "autoscaler_sizes_the_warm_pool" {
  command = apply

  variables {
    autoscaler_warm_pool = "auto"
  }

  assert {
    condition     = strcontains(nonsensitive(module.autoscaler.parameters.config.value), "warm_pool = \"auto\"")
    error_message = "autoscaler_warm_pool = \"auto\" reaches the actuator's configuration."
  }
}

run "autoscaler_warm_pool_is_checked" {
  command = plan

  variables {
    autoscaler_warm_pool = "some"
  }

  expect_failures = [var.autoscaler_warm_pool]
}

run "https_listener_with_certificate" {
  command = plan

  variables {
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  }

  assert {
    condition     = length(module.worker_group.listeners.https) == 1 && length(module.worker_group.listeners.http) == 0
    error_message = "A certificate gives an HTTPS listener and no HTTP listener."
  }
  assert {
    condition = (
      module.worker_group.listeners.https[0].default_action[0].type == "fixed-response" &&
      module.worker_group.listeners.https[0].default_action[0].fixed_response[0].status_code == "404" &&
      one(module.worker_group.listener_rules.oip.condition).path_pattern[0].values == toset(["/v2", "/v2/*"])
    )
    error_message = "The HTTPS listener forwards /v2 and /v2/* and answers 404 to everything else."
  }
  assert {
    condition     = length(module.network.security_group_rules.alb_listener) > 0 && alltrue([for r in module.network.security_group_rules.alb_listener : r.from_port == 443 && r.to_port == 443])
    error_message = "With a certificate the listener port is 443."
  }
}

run "grpc_through_the_https_listener" {
  command = apply

  variables {
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    alb_grpc        = true
  }

  assert {
    condition = (
      module.worker_group.target_groups.grpc[0].protocol == "HTTP" &&
      module.worker_group.target_groups.grpc[0].protocol_version == "GRPC" &&
      module.worker_group.target_groups.grpc[0].port == 8001 &&
      module.worker_group.target_groups.grpc[0].health_check[0].path == "/inference.GRPCInferenceService/ServerReady" &&
      module.worker_group.target_groups.grpc[0].health_check[0].matcher == "0"
    )
    error_message = "alb_grpc: a gRPC target group on worker_grpc_port, checked with the ServerReady RPC for status 0."
  }
  assert {
    condition = (
      module.worker_group.listener_rules.grpc[0].listener_arn == module.worker_group.listeners.https[0].arn &&
      module.worker_group.listener_rules.grpc[0].action[0].target_group_arn == module.worker_group.target_groups.grpc[0].arn &&
      one(module.worker_group.listener_rules.grpc[0].condition).path_pattern[0].values == toset(["/inference.GRPCInferenceService/*"])
    )
    error_message = "The HTTPS listener forwards the OIP gRPC service to the gRPC target group."
  }
  assert {
    condition     = toset(module.worker_group.autoscaling_group.target_group_arns) == toset([module.worker_group.target_groups.oip.arn, module.worker_group.target_groups.grpc[0].arn])
    error_message = "The worker group is attached to both target groups."
  }
  assert {
    condition = (
      module.network.security_group_rules.alb_to_worker_grpc[0].from_port == 8001 &&
      module.network.security_group_rules.worker_grpc_from_alb[0].from_port == 8001 &&
      module.network.security_group_rules.worker_grpc_from_alb[0].referenced_security_group_id == module.network.alb_security_group_id &&
      module.network.security_group_rules.alb_to_worker.from_port == 8000
    )
    error_message = "alb_grpc: the load balancer reaches the workers on the OIP and gRPC ports, nothing else."
  }
  assert {
    condition     = module.worker_group.parameters.env["FLEET_OIP_GRPC_PORT"].value == "8001"
    error_message = "alb_grpc: the workers serve the OIP over gRPC on worker_grpc_port."
  }
  assert {
    condition     = output.grpc_endpoint == "${module.worker_group.load_balancer.dns_name}:443" && output.grpc_target_group_arn == module.worker_group.target_groups.grpc[0].arn && output.inference_url == "https://${module.worker_group.load_balancer.dns_name}/v2"
    error_message = "The gRPC endpoint and target group are outputs."
  }
}

run "grpc_needs_a_certificate" {
  command = plan

  variables {
    alb_grpc = true
  }

  expect_failures = [var.alb_grpc]
}

run "oip_port_is_not_the_metrics_port" {
  command = plan

  variables {
    worker_oip_port = 8080
  }

  expect_failures = [var.worker_oip_port]
}

run "worker_env_cannot_move_the_oip" {
  command = plan

  variables {
    worker_env = { FLEET_OIP_PORT = "9000" }
  }

  expect_failures = [var.worker_env]
}

run "cpu_instance_types_run_on_the_cpu" {
  command = plan

  variables {
    worker_instance_type = "c7i.2xlarge"
  }

  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "REQUIRE_GPU='false'")
    error_message = "A CPU instance type needs no GPU."
  }
}

run "amd_gpu_instances_need_no_nvidia_gpu" {
  command = plan

  variables {
    worker_instance_type = "g4ad.xlarge"
  }

  assert {
    condition     = module.worker_group.require_gpu == false
    error_message = "g4ad has an AMD GPU: nvidia-smi finds none there."
  }
}

run "gpu_requirement_can_be_waived" {
  command = plan

  variables {
    worker_require_gpu = false
  }

  assert {
    condition     = strcontains(base64decode(module.worker_group.launch_template.user_data), "REQUIRE_GPU='false'")
    error_message = "worker_require_gpu = false lets a GPU instance serve on its CPU."
  }
}
