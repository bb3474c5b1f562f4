# Configuration the autoscaler reads at boot: one SecureString parameter per
# environment variable under its own path (the parameter's last path element
# is the variable's name), and its TOML configuration, a parameter of its own.
# User data carries only these paths.
#
# A password is no environment variable and no part of the broker URL: it is a
# file parameter under the autoscaler's files path. The boot script writes each
# one into a file only the container's user can read, mounts it read-only and
# sets the variable the parameter is named after to its path
# (FLEET_BROKER_PASSWORD_FILE=/run/fleet/files/FLEET_BROKER_PASSWORD_FILE).

locals {
  # The variable the autoscaler reads the broker password's file from.
  broker_password_variable = "FLEET_BROKER_PASSWORD_FILE"

  autoscaler_env = merge(
    {
      FLEET_ASG_NAME = var.worker_group_name
      AWS_REGION     = local.region
    },
    var.autoscaler_env,
  )

  # The autoscaler's TOML carries the broker URL, so it is a SecureString too.
  warm_pool = var.autoscaler_warm_pool == null ? null : (
    var.autoscaler_warm_pool == "auto" ? "\"auto\"" : tostring(tonumber(var.autoscaler_warm_pool))
  )
  autoscaler_config = var.autoscaler_config != null ? var.autoscaler_config : templatefile("${path.module}/templates/autoscaler.toml.tftpl", {
    broker_url   = var.broker_url
    models       = var.models
    group_name   = var.worker_group_name
    region       = local.region
    min_capacity = var.worker_min_size
    max_capacity = var.worker_max_size
    metrics_port = var.autoscaler_metrics_port
    namespace    = var.metrics_namespace
    state_name   = local.policy_state_name
    warm_pool    = local.warm_pool
  })
}

# Made holding {} (read as no state yet) so that destroying the deployment
# removes it; the autoscaler overwrites it, so its value and tier are its own.
# Not a secret: times and instance counts.
resource "aws_ssm_parameter" "policy_state" {
  name        = local.policy_state_name
  description = "${var.name} autoscaler policy state (written by the autoscaler)"
  type        = "String"
  tier        = "Intelligent-Tiering"
  value       = "{}"

  lifecycle {
    ignore_changes = [value, tier]
  }
}

resource "aws_ssm_parameter" "autoscaler_env" {
  for_each = local.autoscaler_env

  name        = "${local.autoscaler_parameter_path}/${each.key}"
  description = "${var.name} autoscaler environment: ${each.key}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = each.value
}

resource "aws_ssm_parameter" "autoscaler_broker_password" {
  count = var.broker_password_file ? 1 : 0

  name        = "${local.autoscaler_file_parameter_path}/${local.broker_password_variable}"
  description = "${var.name} autoscaler file: the password of the broker user ${var.broker_username}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.broker_password

  lifecycle {
    precondition {
      condition     = !contains(keys(var.autoscaler_env), "FLEET_BROKER_PASSWORD") && !contains(keys(var.autoscaler_env), local.broker_password_variable)
      error_message = "With a managed broker the password comes from its secret: autoscaler_env must not set FLEET_BROKER_PASSWORD or FLEET_BROKER_PASSWORD_FILE."
    }
  }
}

resource "aws_ssm_parameter" "autoscaler_config" {
  name        = local.autoscaler_config_name
  description = "${var.name} autoscaler configuration (TOML, with the broker URL)"
  type        = "SecureString"
  tier        = length(local.autoscaler_config) > 4096 ? "Advanced" : "Standard"
  key_id      = var.kms_key_arn
  value       = local.autoscaler_config
}
