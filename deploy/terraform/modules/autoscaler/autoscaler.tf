# The autoscaler as a service: one small instance in an Auto Scaling Group of
# one, so a dead instance is replaced. It runs `fleet autoscaler` in a container
# with its configuration (the worker group's name, the capacity bounds) read
# from SSM Parameter Store at boot.

data "aws_ssm_parameter" "autoscaler_ami" {
  name = var.autoscaler_ami_ssm_parameter
}

data "aws_ami" "autoscaler" {
  owners = var.autoscaler_ami_owners

  filter {
    name   = "image-id"
    values = [data.aws_ssm_parameter.autoscaler_ami.insecure_value]
  }
}

resource "aws_launch_template" "autoscaler" {
  name_prefix            = "${var.name}-autoscaler-"
  description            = "${var.name} autoscaler"
  image_id               = data.aws_ami.autoscaler.id
  instance_type          = var.autoscaler_instance_type
  ebs_optimized          = true
  update_default_version = true
  vpc_security_group_ids = [var.security_group_id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.autoscaler.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # the container uses the host network
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = data.aws_ami.autoscaler.root_device_name

    ebs {
      volume_size           = 30
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  user_data = base64encode(templatefile("${path.module}/templates/autoscaler-user-data.sh.tftpl", {
    run_script = templatefile("${path.module}/templates/autoscaler-run.sh.tftpl", {
      region              = local.region
      parameter_path      = local.autoscaler_parameter_path
      file_parameter_path = local.autoscaler_file_parameter_path
      config_name         = local.autoscaler_config_name
      image               = var.autoscaler_image
      log_group           = aws_cloudwatch_log_group.autoscaler.name
    })
  }))

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-autoscaler", Role = "autoscaler" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-autoscaler", Role = "autoscaler" })
  }
}

resource "aws_autoscaling_group" "autoscaler" {
  name                = local.autoscaler_group_name
  vpc_zone_identifier = var.private_subnet_ids

  min_size         = 1
  max_size         = 1
  desired_capacity = 1

  health_check_type         = "EC2"
  health_check_grace_period = 120

  launch_template {
    id      = aws_launch_template.autoscaler.id
    version = aws_launch_template.autoscaler.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 0
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-autoscaler"
    propagate_at_launch = true
  }

  # The configuration and the permission to read it exist before the first boot.
  depends_on = [
    aws_iam_role_policy.autoscaler,
    aws_iam_role_policy.autoscaler_kafka,
    aws_ssm_parameter.autoscaler_env,
    aws_ssm_parameter.autoscaler_config,
    aws_ssm_parameter.autoscaler_broker_password,
  ]
}
