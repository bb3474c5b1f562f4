# GPU workers: a launch template (IMDSv2 only, encrypted root volume, user data
# that reads its configuration from SSM at boot) and an Auto Scaling Group
# across the private subnets with ELB health checks, a warm pool of stopped
# instances and lifecycle hooks for launching and draining.

locals {
  # NVIDIA GPU instance families (g4dn, g5, g6, p4d, p5, ...; not g4ad, AMD).
  worker_require_gpu = coalesce(
    var.worker_require_gpu,
    can(regex("^(g[0-9]+[a-z]*|p[0-9]+[a-z]*)\\.", var.worker_instance_type)) && !startswith(var.worker_instance_type, "g4ad."),
  )
}

data "aws_ssm_parameter" "worker_ami" {
  name = var.worker_ami_ssm_parameter
}

# Looked up for its root device name, so the encrypted volume below really is
# the root volume (Ubuntu AMIs use /dev/sda1, Amazon Linux /dev/xvda).
data "aws_ami" "worker" {
  owners = var.worker_ami_owners

  filter {
    name   = "image-id"
    values = [data.aws_ssm_parameter.worker_ami.insecure_value]
  }
}

resource "aws_launch_template" "worker" {
  name_prefix            = "${var.name}-worker-"
  description            = "${var.name} GPU worker"
  image_id               = data.aws_ami.worker.id
  instance_type          = var.worker_instance_type
  ebs_optimized          = true
  update_default_version = true
  vpc_security_group_ids = [var.worker_security_group_id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # the worker container uses the host network
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = data.aws_ami.worker.root_device_name

    ebs {
      volume_size           = var.worker_root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  # Names and paths only: the broker URL and every other setting are read from
  # SSM Parameter Store at boot with the instance role.
  user_data = base64encode(templatefile("${path.module}/templates/worker-user-data.sh.tftpl", {
    drain_timeout_seconds = var.drain_timeout_seconds
    run_script = templatefile("${path.module}/templates/worker-run.sh.tftpl", {
      region                = local.region
      parameter_path        = local.worker_parameter_path
      file_parameter_path   = local.worker_file_parameter_path
      image                 = var.worker_image
      http_port             = var.worker_http_port
      oip_port              = var.worker_oip_port
      drain_timeout_seconds = var.drain_timeout_seconds
      log_group             = aws_cloudwatch_log_group.worker.name
      group_name            = local.worker_group_name
      launch_hook_name      = local.launch_hook_name
      require_gpu           = local.worker_require_gpu
    })
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-worker", Role = "worker" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-worker", Role = "worker" })
  }
}

resource "aws_autoscaling_group" "worker" {
  name                = local.worker_group_name
  vpc_zone_identifier = var.private_subnet_ids

  min_size         = var.worker_min_size
  max_size         = var.worker_max_size
  desired_capacity = var.worker_initial_capacity

  # A worker that stops answering the target group's health check (the Open
  # Inference Protocol's /v2/health/ready: models loaded, inference path
  # serving) is replaced. That check does not depend on the broker: a worker
  # waiting for its broker still serves /v2, and a broker outage must not
  # replace the whole group (alb.tf).
  health_check_type         = "ELB"
  health_check_grace_period = var.health_check_grace_period
  target_group_arns         = concat([aws_lb_target_group.worker.arn], aws_lb_target_group.grpc[*].arn)
  default_instance_warmup   = var.health_check_grace_period

  termination_policies = ["OldestLaunchTemplate", "OldestInstance"]
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "WarmPoolDesiredCapacity",
    "WarmPoolWarmedCapacity",
  ]

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  # Stopped instances that already booted and pulled the image: scale-out
  # starts one of these instead of booting a new instance from scratch. The
  # pool holds max(max_group_prepared_capacity - desired, min_size) instances;
  # with the default cap of min_size that is exactly warm_pool_min_size.
  warm_pool {
    pool_state                  = "Stopped"
    min_size                    = var.warm_pool_min_size
    max_group_prepared_capacity = coalesce(var.warm_pool_max_prepared_capacity, var.warm_pool_min_size)

    instance_reuse_policy {
      reuse_on_scale_in = false
    }
  }

  # Launching (into service or into the warm pool): the boot script completes
  # this hook once the image is pulled; an instance that cannot is abandoned.
  initial_lifecycle_hook {
    name                 = local.launch_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    default_result       = "ABANDON"
    heartbeat_timeout    = var.launch_timeout_seconds
  }

  # Terminating: the worker sees its target lifecycle state turn "Terminated",
  # drains, then completes this hook (worker/lifecycle.py).
  initial_lifecycle_hook {
    name                 = local.termination_hook_name
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = var.drain_timeout_seconds
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-worker"
    propagate_at_launch = true
  }

  # The configuration and the permission to read it exist before the first boot.
  depends_on = [
    aws_iam_role_policy.worker,
    aws_iam_role_policy.worker_kafka,
    aws_ssm_parameter.worker_env,
    aws_ssm_parameter.worker_broker_url,
    aws_ssm_parameter.worker_broker_password,
  ]

  lifecycle {
    # The autoscaler owns the desired capacity once the group exists.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = length(var.private_subnet_ids) >= 2
      error_message = "The worker group must span at least two subnets."
    }
    precondition {
      condition     = var.worker_min_size <= var.worker_initial_capacity && var.worker_initial_capacity <= var.worker_max_size
      error_message = "worker_initial_capacity must lie between worker_min_size and worker_max_size."
    }
    precondition {
      condition     = var.warm_pool_min_size <= var.worker_max_size && coalesce(var.warm_pool_max_prepared_capacity, var.warm_pool_min_size) >= var.warm_pool_min_size
      error_message = "warm_pool_min_size must not exceed worker_max_size, nor warm_pool_max_prepared_capacity fall below it."
    }
  }
}
