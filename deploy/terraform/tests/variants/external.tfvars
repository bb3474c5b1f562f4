# checkov (scripts/deploy-checks.sh) and the apply test evaluate the external broker variant with these values.
worker_image     = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0"
autoscaler_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/cpu:0.1.0"
broker           = "external"
broker_url       = "amqps://fleet:not-a-real-password@broker.example.internal:5671/"
