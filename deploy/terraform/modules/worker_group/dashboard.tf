# A CloudWatch dashboard of the fleet: the worker group's own metrics (desired,
# in service, pending, terminating, warm), the workers' CPU, and, with
# metrics_namespace set, the autoscaler's decisions (DesiredCapacity,
# BacklogPerInstance, ScalingDecision: +1 out, -1 in, 0 hold) and the
# load balancer's healthy hosts.

locals {
  dashboard_group_metric = [for name in [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
    "WarmPoolWarmedCapacity",
  ] : ["AWS/AutoScaling", name, "AutoScalingGroupName", local.worker_group_name]]

  dashboard_autoscaler_metrics = var.metrics_namespace == null ? [] : [
    for name in ["DesiredCapacity", "BacklogPerInstance", "ScalingDecision"] :
    [var.metrics_namespace, name, "AutoScalingGroupName", local.worker_group_name]
  ]

  dashboard_widgets = concat(
    [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title   = "Worker group capacity"
          region  = local.region
          stat    = "Maximum"
          period  = 60
          metrics = local.dashboard_group_metric
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title   = "Worker CPU utilization"
          region  = local.region
          stat    = "Average"
          period  = 60
          metrics = [["AWS/EC2", "CPUUtilization", "AutoScalingGroupName", local.worker_group_name]]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title  = "Healthy workers behind the load balancer"
          region = local.region
          stat   = "Minimum"
          period = 60
          metrics = [[
            "AWS/ApplicationELB", "HealthyHostCount",
            "TargetGroup", aws_lb_target_group.worker.arn_suffix,
            "LoadBalancer", aws_lb.this.arn_suffix,
          ]]
        }
      },
    ],
    var.metrics_namespace == null ? [] : [
      {
        type = "metric", x = 12, y = 6, width = 12, height = 6
        properties = {
          title   = "Autoscaler (${var.metrics_namespace})"
          region  = local.region
          stat    = "Average"
          period  = 60
          metrics = local.dashboard_autoscaler_metrics
        }
      },
    ],
  )
}

resource "aws_cloudwatch_dashboard" "fleet" {
  dashboard_name = var.name
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}
