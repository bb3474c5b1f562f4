# checkov (scripts/deploy-checks.sh) and the apply test evaluate the kafka broker variant with these values.
worker_image        = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0"
autoscaler_image    = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0"
broker              = "kafka"
broker_client_cidrs = ["10.99.0.0/16"]
