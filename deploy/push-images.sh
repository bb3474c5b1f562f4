#!/usr/bin/env bash
# Builds the two images and pushes them to the ECR repositories Terraform made
# (output ecr_repository_urls), then prints the tfvars lines that use them.
#
#   deploy/push-images.sh TAG [TERRAFORM_DIR]
#
#   TAG            the release tag (the repositories' tags are immutable)
#   TERRAFORM_DIR  where `terraform apply` ran (default: deploy/terraform)
#
# The worker (GPU) image is built from deploy/docker/Dockerfile, the CPU image
# (the autoscaler's) from deploy/docker/Dockerfile.cpu, both from the
# repository root. Environment: CONTAINER_TOOL (docker, else podman),
# TERRAFORM (terraform), AWS_REGION (else the one in the repository URL).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:?usage: deploy/push-images.sh TAG [TERRAFORM_DIR]}"
TF_DIR="${2:-$ROOT/deploy/terraform}"
TERRAFORM="${TERRAFORM:-terraform}"
TOOL="${CONTAINER_TOOL:-$(command -v docker || command -v podman || true)}"

die() {
    echo "push-images: $*" >&2
    exit 1
}

[[ -n "$TOOL" ]] || die "neither docker nor podman found (set CONTAINER_TOOL)"
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "not a valid image tag: $TAG"

urls="$("$TERRAFORM" -chdir="$TF_DIR" output -json ecr_repository_urls)" ||
    die "no ecr_repository_urls output in $TF_DIR: run terraform apply with create_ecr_repositories = true"
worker_repo="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["worker"])' <<<"$urls")"
cpu_repo="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["cpu"])' <<<"$urls")"
registry="${worker_repo%%/*}"
region="${AWS_REGION:-$(cut -d. -f4 <<<"$registry")}"

aws ecr get-login-password --region "$region" |
    "$TOOL" login --username AWS --password-stdin "$registry"

"$TOOL" build -f "$ROOT/deploy/docker/Dockerfile" -t "$worker_repo:$TAG" "$ROOT"
"$TOOL" build -f "$ROOT/deploy/docker/Dockerfile.cpu" -t "$cpu_repo:$TAG" "$ROOT"
"$TOOL" push "$worker_repo:$TAG"
"$TOOL" push "$cpu_repo:$TAG"

cat <<VARS
worker_image     = "$worker_repo:$TAG"
autoscaler_image = "$cpu_repo:$TAG"
VARS
