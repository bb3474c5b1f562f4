# Configuration the workers read at boot: one SecureString parameter per
# environment variable under the worker's own path (the parameter's last path
# element is the variable's name). User data carries only these paths.
#
# A password is no environment variable and no part of the broker URL: it is a
# file parameter under the worker's files path. The boot script writes each one
# into a file only the container's user can read, mounts it read-only and sets
# the variable the parameter is named after to its path
# (FLEET_BROKER_PASSWORD_FILE=/run/fleet/files/FLEET_BROKER_PASSWORD_FILE).

locals {
  # The variable the worker reads the broker password's file from.
  broker_password_variable = "FLEET_BROKER_PASSWORD_FILE"

  worker_env = merge(
    {
      FLEET_MODELS         = local.models_uri
      FLEET_HTTP_PORT      = tostring(var.worker_http_port)
      FLEET_DRAIN_TIMEOUT  = tostring(var.drain_timeout_seconds - 20) # finish before the hook times out
      FLEET_LIFECYCLE_HOOK = local.termination_hook_name
      FLEET_ASG_NAME       = local.worker_group_name
      AWS_REGION           = local.region
    },
    local.oip_env,
    local.jobs_env,
    var.worker_env,
  )

  # The Open Inference Protocol the load balancer forwards to: on every
  # address of the instance (the container shares the host's network), on the
  # ports of the target groups. worker_env may not change these (its validation).
  oip_env = merge(
    {
      FLEET_OIP_HOST = "0.0.0.0"
      FLEET_OIP_PORT = tostring(var.worker_oip_port)
    },
    var.alb_grpc ? { FLEET_OIP_GRPC_PORT = tostring(var.worker_grpc_port) } : {},
  )
}


resource "aws_ssm_parameter" "worker_env" {
  for_each = local.worker_env

  name        = "${local.worker_parameter_path}/${each.key}"
  description = "${var.name} worker environment: ${each.key}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = each.value
}

resource "aws_ssm_parameter" "worker_broker_url" {
  name        = "${local.worker_parameter_path}/FLEET_BROKER_URL"
  description = "${var.name} worker environment: the broker URL (with credentials)"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.broker_url
}

resource "aws_ssm_parameter" "worker_broker_password" {
  count = var.broker_password_file ? 1 : 0

  name        = "${local.worker_file_parameter_path}/${local.broker_password_variable}"
  description = "${var.name} worker file: the password of the broker user ${var.broker_username}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.broker_password

  lifecycle {
    precondition {
      condition     = !contains(keys(var.worker_env), "FLEET_BROKER_PASSWORD") && !contains(keys(var.worker_env), local.broker_password_variable)
      error_message = "With a managed broker the password comes from its secret: worker_env must not set FLEET_BROKER_PASSWORD or FLEET_BROKER_PASSWORD_FILE."
    }
  }
}
