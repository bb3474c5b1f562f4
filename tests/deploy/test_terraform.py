"""Structural checks of deploy/terraform on the parsed HCL (python-hcl2).

These run everywhere, without terraform or the AWS provider. ``terraform
validate`` and ``terraform test`` run from scripts/deploy-checks.sh where the
provider is installed.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

from worker.health import HEALTH_PATH, READY_PATH
from worker.settings import WorkerSettings

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
MODULES = TF / "modules"
MODULE_NAMES = ("network", "broker", "images", "worker_group", "autoscaler")
TEMPLATES = MODULES / "worker_group" / "templates"
AUTOSCALER_TEMPLATES = MODULES / "autoscaler" / "templates"


def template(name: str) -> Path:
    """A template of the module that renders it: worker-* in worker_group,
    autoscaler* in autoscaler."""
    return (AUTOSCALER_TEMPLATES if name.startswith("autoscaler") else TEMPLATES) / name


def shell_templates() -> list[Path]:
    """Every user-data and run-script template of every module."""
    return sorted(MODULES.glob("*/templates/*.sh.tftpl"))


def _clean(value: Any) -> Any:
    """python-hcl2 output without metadata keys and with plain strings (its
    newer releases keep the quotes of string literals and block labels)."""
    if isinstance(value, dict):
        return {
            _clean(k): _clean(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.startswith("__"))
        }
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        from hcl2.utils import SerializationOptions

        options = SerializationOptions(
            with_comments=False, explicit_blocks=False, strip_string_quotes=True
        )
        parsed = hcl2.loads(text, serialization_options=options)
    except ImportError:  # python-hcl2 before 8
        parsed = hcl2.loads(text)
    return dict(_clean(parsed))


def tf_files() -> list[Path]:
    """The root module's .tf files, then each module's."""
    return sorted(TF.glob("*.tf")) + [
        path for name in MODULE_NAMES for path in sorted((MODULES / name).glob("*.tf"))
    ]


def _module_config(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "resource": {},
        "data": {},
        "variable": {},
        "output": {},
        "locals": {},
        "module": {},
    }
    for path in sorted(directory.glob("*.tf")):
        parsed = _load(path)
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        key = f"{rtype}.{name}"
                        assert key not in out[kind], f"{directory.name}: {kind} {key} twice"
                        out[kind][key] = body
        for kind in ("variable", "output", "module"):
            for block in parsed.get(kind, []):
                out[kind].update(block)
        for block in parsed.get("locals", []):
            for name, expr in block.items():
                assert name not in out["locals"], f"{directory.name}: local {name} twice"
                out["locals"][name] = expr
    return out


@cache
def config() -> dict[str, dict[str, Any]]:
    """{"resource": {"type.name": body}, "data": {...}, "locals": {name: expr}}
    over the root module and every module under modules/ (a resource's
    "type.name" is unique across them all; a data source or local that two
    modules both define must be the same in both), "variable", "output" and
    "module" (the module calls) of the root module, which users see, and
    "modules": {name: that module's own config}."""
    root = _module_config(TF)
    modules = {name: _module_config(MODULES / name) for name in MODULE_NAMES}
    out: dict[str, dict[str, Any]] = {
        "resource": dict(root["resource"]),
        "data": dict(root["data"]),
        "variable": root["variable"],
        "output": root["output"],
        "locals": dict(root["locals"]),
        "module": root["module"],
        "modules": modules,
    }
    for name, module in modules.items():
        for key, body in module["resource"].items():
            assert key not in out["resource"], f"resource {key} in two modules ({name})"
            out["resource"][key] = body
        for kind in ("data", "locals"):
            for key, body in module[kind].items():
                if key in out[kind]:
                    assert out[kind][key] == body, f"{kind} {key} differs in module {name}"
                out[kind][key] = body
    return out


def _module_resources_of_root() -> dict[str, Any]:
    """The resources the root module itself declares."""
    return _module_config(TF)["resource"]


def resources(rtype: str) -> dict[str, Any]:
    return {k: v for k, v in config()["resource"].items() if k.startswith(rtype + ".")}


def block(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name, [])
    return value if isinstance(value, list) else [value]


def policy_statements() -> dict[str, list[dict[str, Any]]]:
    return {
        key: block(body, "statement")
        for key, body in config()["data"].items()
        if key.startswith("aws_iam_policy_document.")
    }


def tf_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in tf_files())


# ---------------------------------------------------------------------------
# Layout and documentation
# ---------------------------------------------------------------------------


MODULE_FILES = {
    "network": ("main.tf", "security_groups.tf"),
    "broker": ("main.tf", "security_groups.tf", "kafka_iam.tf"),
    "images": ("main.tf",),
    "worker_group": (
        "main.tf",
        "worker.tf",
        "alb.tf",
        "config.tf",
        "iam.tf",
        "models.tf",
        "jobs.tf",
        "dashboard.tf",
    ),
    "autoscaler": ("main.tf", "autoscaler.tf", "config.tf", "iam.tf"),
}


def test_files_by_concern() -> None:
    for name in (
        "versions.tf",
        "main.tf",
        "variables.tf",
        "outputs.tf",
        "moved.tf",
        ".terraform.lock.hcl",
        "backend.tf.example",
        "README.md",
        ".checkov.baseline",
    ):
        assert (TF / name).is_file(), name
    # The root composes the modules and creates nothing but the shared key.
    assert set(config()["module"]) == set(MODULE_NAMES)
    for name, body in config()["module"].items():
        assert body["source"] == f"./modules/{name}", name
    root = config()["modules"]
    assert {k.split(".")[0] for k in _module_resources_of_root()} == {
        "aws_kms_key",
        "aws_kms_alias",
    }
    for name, files in MODULE_FILES.items():
        directory = MODULES / name
        for file in ("versions.tf", "variables.tf", "outputs.tf", *files):
            assert (directory / file).is_file(), f"{name}/{file}"
        # Modules declare their providers' requirements but configure none.
        versions = _load(directory / "versions.tf")["terraform"][0]["required_providers"][0]
        assert versions["aws"]["version"] == ">= 5.60, < 6.0", name
        for path in directory.glob("*.tf"):
            assert "provider" not in _load(path), f"{name}/{path.name}: a provider block"
        for var_name, body in root[name]["variable"].items():
            assert str(body.get("description", "")).strip(), f"{name}: variable {var_name}"
        for out_name, body in root[name]["output"].items():
            assert str(body.get("description", "")).strip(), f"{name}: output {out_name}"
        # Every variable a module declares is used in it, and every argument
        # of its call at the root is one of its variables.
        text = "\n".join(p.read_text(encoding="utf-8") for p in directory.glob("*.tf"))
        for var_name in root[name]["variable"]:
            assert f"var.{var_name}" in text, f"{name}: variable {var_name} unused"
        arguments = set(config()["module"][name]) - {"source"}
        assert arguments <= set(root[name]["variable"]), (name, arguments)
        required = {v for v, body in root[name]["variable"].items() if "default" not in body}
        assert required <= arguments, (name, required - arguments)
    tests = list((TF / "tests").glob("*.tftest.hcl"))
    assert tests, "terraform test files"
    assert all('mock_provider "aws"' in t.read_text() for t in tests)


def test_variables_and_outputs_documented() -> None:
    for kind in ("variable", "output"):
        for name, body in config()[kind].items():
            assert str(body.get("description", "")).strip(), f"{kind} {name} has no description"
    readme = (TF / "README.md").read_text(encoding="utf-8")
    for name in config()["variable"]:
        assert f"`{name}`" in readme, f"README does not describe variable {name}"
    assert "terraform init" in readme and "terraform apply -var-file=" in readme


def test_ami_from_ssm_public_parameter_and_default_instance_type() -> None:
    variables = config()["variable"]
    assert variables["worker_instance_type"]["default"] == "g5.xlarge"
    assert str(variables["worker_ami_ssm_parameter"]["default"]).startswith("/aws/service/")
    ami = config()["data"]["aws_ssm_parameter.worker_ami"]
    assert ami["name"] == "${var.worker_ami_ssm_parameter}"
    lt = config()["resource"]["aws_launch_template.worker"]
    assert lt["instance_type"] == "${var.worker_instance_type}"


# ---------------------------------------------------------------------------
# Launch templates
# ---------------------------------------------------------------------------


def test_imdsv2_required() -> None:
    templates = resources("aws_launch_template")
    assert set(templates) == {"aws_launch_template.worker", "aws_launch_template.autoscaler"}
    for key, lt in templates.items():
        (meta,) = block(lt, "metadata_options")
        assert meta["http_tokens"] == "required", key
        assert meta["http_endpoint"] == "enabled", key
        assert int(meta["http_put_response_hop_limit"]) == 1, key


def test_root_volumes_encrypted() -> None:
    for key, lt in resources("aws_launch_template").items():
        mappings = block(lt, "block_device_mappings")
        assert mappings, key
        for mapping in mappings:
            (ebs,) = block(mapping, "ebs")
            assert ebs["encrypted"] in (True, "true"), key
            # The encrypted volume is the AMI's root volume, not an extra one.
            root = r"\$\{data\.aws_ami\.\w+\.root_device_name\}"
            assert re.fullmatch(root, mapping["device_name"]), key


# ---------------------------------------------------------------------------
# Worker group
# ---------------------------------------------------------------------------


def test_worker_group_health_checks_warm_pool_and_hooks() -> None:
    asg = config()["resource"]["aws_autoscaling_group.worker"]
    assert asg["health_check_type"] == "ELB"
    assert asg["target_group_arns"] == (
        "${concat([aws_lb_target_group.worker.arn], aws_lb_target_group.grpc[*].arn)}"
    )
    (warm,) = block(asg, "warm_pool")
    assert warm["pool_state"] == "Stopped"
    hooks = {h["lifecycle_transition"]: h for h in block(asg, "initial_lifecycle_hook")}
    drain = hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert drain["name"] == "${local.termination_hook_name}"
    assert drain["default_result"] == "CONTINUE"
    assert drain["heartbeat_timeout"] == "${var.drain_timeout_seconds}"
    assert "autoscaling:EC2_INSTANCE_LAUNCHING" in hooks
    # The workers learn the hook's name from their configuration.
    assert "FLEET_LIFECYCLE_HOOK = local.termination_hook_name" in config()["locals"]["worker_env"]


def test_worker_group_spans_at_least_two_subnets() -> None:
    asg = config()["resource"]["aws_autoscaling_group.worker"]
    assert asg["vpc_zone_identifier"] == "${var.private_subnet_ids}"
    conditions = [p["condition"] for p in block(block(asg, "lifecycle")[0], "precondition")]
    assert "${length(var.private_subnet_ids) >= 2}" in conditions
    # The root gives the worker group the network's private subnets.
    call = config()["module"]["worker_group"]
    assert call["private_subnet_ids"] == "${module.network.private_subnet_ids}"
    variables = config()["variable"]
    assert int(variables["az_count"]["default"]) >= 2
    (az_rule,) = block(variables["az_count"], "validation")
    assert "var.az_count >= 2" in az_rule["condition"]
    (subnet_rule,) = block(variables["private_subnet_ids"], "validation")
    assert "length(var.private_subnet_ids) >= 2" in subnet_rule["condition"]


def _oip_http_routes() -> set[str]:
    """The paths worker/oip_http.py registers with ``add_get`` (string literals)."""
    tree = ast.parse((ROOT / "worker" / "oip_http.py").read_text(encoding="utf-8"))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_get"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def test_target_group_is_the_oip_port_checked_on_its_readiness() -> None:
    # The group replaces instances that fail the target group's check: that
    # is the OIP's readiness (models loaded, inference path serving), which
    # the worker's OIP server answers, never the broker-bound /readyz (a
    # broker outage would replace them all) and never the metrics port.
    path = config()["locals"]["worker_health_path"]
    assert path == "/v2/health/ready"
    assert path in _oip_http_routes(), "the worker's OIP server does not serve it"
    assert path not in (HEALTH_PATH, READY_PATH)
    tg = config()["resource"]["aws_lb_target_group.worker"]
    assert tg["port"] == "${var.worker_oip_port}"
    assert tg["protocol"] == "HTTP"
    (check,) = block(tg, "health_check")
    assert check["path"] == "${local.worker_health_path}"
    assert check["port"] == "traffic-port"
    assert str(check["matcher"]) == "200"
    variables = config()["variable"]
    assert int(variables["worker_oip_port"]["default"]) == 8000
    assert int(variables["worker_grpc_port"]["default"]) == 8001
    assert int(variables["worker_http_port"]["default"]) == 8080
    (rule,) = block(variables["worker_oip_port"], "validation")
    assert "var.worker_oip_port != var.worker_http_port" in rule["condition"]


def test_listeners_forward_only_the_oip_and_answer_404_otherwise() -> None:
    listeners = resources("aws_lb_listener")
    assert set(listeners) == {"aws_lb_listener.http", "aws_lb_listener.https"}
    for key, listener in listeners.items():
        (action,) = block(listener, "default_action")
        assert action["type"] == "fixed-response", key
        (fixed,) = block(action, "fixed_response")
        assert fixed["status_code"] == "404", key
        assert fixed["content_type"] == "application/json", key
        assert fixed["message_body"] == "${local.alb_not_found}", key
    assert config()["locals"]["alb_not_found"] == '${jsonencode({error = "not found"})}'
    # Every listener rule forwards the OIP to its target group; nothing else
    # (the workers' /healthz, /readyz, /metrics) is routed.
    rule = config()["resource"]["aws_lb_listener_rule.oip"]
    assert rule["listener_arn"] == "${local.alb_listener_arn}"
    (action,) = block(rule, "action")
    assert action == {"type": "forward", "target_group_arn": "${aws_lb_target_group.worker.arn}"}
    (condition,) = block(rule, "condition")
    (pattern,) = block(condition, "path_pattern")
    assert pattern["values"] == ["/v2", "/v2/*"]
    for key, other in resources("aws_lb_listener_rule").items():
        (cond,) = block(other, "condition")
        values = [v for pp in block(cond, "path_pattern") for v in pp["values"]]
        assert values and all(v.startswith(("/v2", "/${local.oip_grpc_service}/")) for v in values)
        assert not {"/healthz", "/readyz", "/metrics"} & set(values), key
    # One listener at a time: the rule is on whichever exists.
    arn = config()["locals"]["alb_listener_arn"]
    assert "aws_lb_listener.https[*].arn" in arn and "aws_lb_listener.http[*].arn" in arn


def _grpc_service_methods() -> tuple[str, set[str]]:
    """The service name worker/oip_grpc.py registers (its ``SERVICE``) and the
    string constants of that module (among them the method names)."""
    tree = ast.parse((ROOT / "worker" / "oip_grpc.py").read_text(encoding="utf-8"))
    (service,) = [
        str(node.value.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["SERVICE"]
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]
    strings = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return service, strings


def test_grpc_target_group_and_rule_with_alb_grpc() -> None:
    tg = config()["resource"]["aws_lb_target_group.grpc"]
    assert tg["count"] == "${var.alb_grpc ? 1 : 0}"
    assert (tg["protocol"], tg["protocol_version"]) == ("HTTP", "GRPC")
    assert tg["port"] == "${var.worker_grpc_port}"
    (check,) = block(tg, "health_check")
    assert check["path"] == "${local.worker_grpc_health_path}"
    assert str(check["matcher"]) == "0"  # gRPC status OK
    # The health check calls the ServerReady method the worker's gRPC server registers.
    service, strings = _grpc_service_methods()
    local = config()["locals"]
    assert local["oip_grpc_service"] == service == "inference.GRPCInferenceService"
    assert local["worker_grpc_health_path"] == "/${local.oip_grpc_service}/ServerReady"
    assert "ServerReady" in strings
    rule = config()["resource"]["aws_lb_listener_rule.grpc"]
    assert rule["count"] == "${var.alb_grpc ? 1 : 0}"
    assert rule["listener_arn"] == "${one(aws_lb_listener.https[*].arn)}"
    (action,) = block(rule, "action")
    assert action == {"type": "forward", "target_group_arn": "${aws_lb_target_group.grpc[0].arn}"}
    (condition,) = block(rule, "condition")
    (pattern,) = block(condition, "path_pattern")
    assert pattern["values"] == ["/${local.oip_grpc_service}/*"]
    # The workers serve it only with alb_grpc, on worker_grpc_port.
    oip_env = local["oip_env"]
    assert "var.alb_grpc ? {FLEET_OIP_GRPC_PORT = tostring(var.worker_grpc_port)} : {}" in oip_env


def test_alb_grpc_needs_a_certificate() -> None:
    variable = config()["variable"]["alb_grpc"]
    assert variable["default"] is False
    (rule,) = block(variable, "validation")
    assert rule["condition"] == "${!var.alb_grpc || var.certificate_arn != null}"
    message = rule["error_message"]
    assert message.startswith("alb_grpc = true needs certificate_arn")
    assert "HTTPS listener" in message


def test_workers_serve_the_oip_on_the_target_groups_ports() -> None:
    local = config()["locals"]
    assert "local.oip_env" in local["worker_env"]
    assert 'FLEET_OIP_HOST = "0.0.0.0"' in local["oip_env"]
    assert "FLEET_OIP_PORT = tostring(var.worker_oip_port)" in local["oip_env"]
    # worker_env cannot move them away from the target groups.
    rules = block(config()["variable"]["worker_env"], "validation")
    guarded = [r["condition"] for r in rules if "FLEET_OIP_PORT" in r["condition"]]
    assert guarded and all(n in guarded[0] for n in ("FLEET_OIP_HOST", "FLEET_OIP_GRPC_PORT"))
    # The container shares the instance's network and is started with the
    # OIP on every address, on the port the boot script is given.
    run = (TEMPLATES / "worker-run.sh.tftpl").read_text(encoding="utf-8")
    assert "--network host" in run
    assert "OIP_PORT='${oip_port}'" in run
    assert '--oip-host 0.0.0.0 --oip-port "$OIP_PORT"' in run
    worker_tf = (MODULES / "worker_group" / "worker.tf").read_text()
    assert re.search(r"\boip_port\s+= var\.worker_oip_port\n", worker_tf)
    assert config()["module"]["worker_group"]["worker_oip_port"] == "${var.worker_oip_port}"


def test_autoscaler_is_a_group_of_one() -> None:
    asg = config()["resource"]["aws_autoscaling_group.autoscaler"]
    assert [int(asg[k]) for k in ("min_size", "max_size", "desired_capacity")] == [1, 1, 1]
    assert len(resources("aws_autoscaling_group")) == 2


# ---------------------------------------------------------------------------
# IAM
# ---------------------------------------------------------------------------


def test_no_wildcard_autoscaling_actions_anywhere() -> None:
    # Policy documents, jsonencode()d policies, anything in any .tf file.
    assert not re.search(r"autoscaling:[A-Za-z]*\*", tf_text())
    for key, statements in policy_statements().items():
        for st in statements:
            for action in st.get("actions", []):
                assert action != "*", key
                if action.startswith("autoscaling:"):
                    assert "*" not in action, (key, action)


def test_autoscaling_mutations_scoped_to_the_worker_group() -> None:
    for key, statements in policy_statements().items():
        for st in statements:
            mutations = [
                a
                for a in st.get("actions", [])
                if a.startswith("autoscaling:") and not a.startswith("autoscaling:Describe")
            ]
            if mutations:
                # the worker group's own policy ARN (the autoscaler module is given it)
                assert st["resources"] in (
                    ["${local.worker_group_arn}"],
                    ["${var.worker_group_arn}"],
                ), (key, mutations)
    assert config()["locals"]["worker_group_arn"].endswith(
        ":autoScalingGroupName/${local.worker_group_name}"
    )
    assert config()["locals"]["worker_group_name"] == "${var.name}-worker"
    worker_group = config()["modules"]["worker_group"]
    assert worker_group["output"]["group_policy_arn"]["value"] == "${local.worker_group_arn}"
    call = config()["module"]["autoscaler"]
    assert call["worker_group_arn"] == "${module.worker_group.group_policy_arn}"
    assert "worker_group_arn" not in config()["modules"]["autoscaler"]["locals"]


def _actions(doc: str) -> dict[str, dict[str, Any]]:
    return {a: st for st in policy_statements()[doc] for a in st.get("actions", [])}


def test_worker_role_permissions() -> None:
    actions = _actions("aws_iam_policy_document.worker")
    assert "autoscaling:CompleteLifecycleAction" in actions
    assert "autoscaling:SetDesiredCapacity" not in actions
    params = actions["ssm:GetParametersByPath"]["resources"]
    assert all(re.search(r"\$\{local\.worker_(file_)?parameter_path\}", r) for r in params)
    # The worker publishes no CloudWatch metrics (Prometheus and heartbeats).
    assert "cloudwatch:PutMetricData" not in actions
    assert actions["s3:GetObject"]["resources"] == [
        "arn:${local.partition}:s3:::${local.models_bucket}/${local.models_prefix_clean}/*"
    ]


def test_autoscaler_role_permissions() -> None:
    actions = _actions("aws_iam_policy_document.autoscaler")
    assert "autoscaling:DescribeAutoScalingGroups" in actions
    assert actions["autoscaling:SetDesiredCapacity"]["resources"] == ["${var.worker_group_arn}"]
    assert "autoscaling:CompleteLifecycleAction" not in actions
    params = actions["ssm:GetParametersByPath"]["resources"]
    assert not any("worker_parameter_path" in r for r in params)


def _dynamic_statements(doc: str) -> dict[str, dict[str, Any]]:
    body = config()["data"][doc]
    out = {}
    for dyn in block(body, "dynamic"):
        for content in block(dyn.get("statement", {}), "content"):
            out[content["sid"]] = {**content, "for_each": dyn["statement"]["for_each"]}
    return out


def test_autoscaler_may_put_metrics_into_its_namespace_only() -> None:
    st = _dynamic_statements("aws_iam_policy_document.autoscaler")["PutMetricsInOwnNamespace"]
    assert st["actions"] == ["cloudwatch:PutMetricData"]
    assert "var.metrics_namespace" in st["for_each"]
    (cond,) = block(st, "condition")
    assert cond["variable"] == "cloudwatch:namespace"
    assert cond["values"] == ["${statement.value}"]
    template = (AUTOSCALER_TEMPLATES / "autoscaler.toml.tftpl").read_text(encoding="utf-8")
    assert "cloudwatch_namespace = ${jsonencode(namespace)}" in template
    assert (
        "namespace    = var.metrics_namespace" in (MODULES / "autoscaler" / "config.tf").read_text()
    )
    assert config()["module"]["autoscaler"]["metrics_namespace"] == "${var.metrics_namespace}"


def test_autoscaler_keeps_its_policy_state_and_may_size_the_warm_pool() -> None:
    statements = {
        st["sid"]: st
        for st in block(config()["data"]["aws_iam_policy_document.autoscaler"], "statement")
    }
    state = statements["KeepOwnPolicyState"]
    assert state["actions"] == ["ssm:GetParameter", "ssm:PutParameter"]
    assert state["resources"] == ["${local.parameter_arn_prefix}${local.policy_state_name}"]
    assert config()["locals"]["policy_state_name"] == "/${var.name}/autoscaler/policy-state"
    # outside the env path, whose parameters become the container's environment
    assert not config()["locals"]["policy_state_name"].startswith(
        config()["locals"]["autoscaler_parameter_path"]
    )
    pool = _dynamic_statements("aws_iam_policy_document.autoscaler")["SizeWorkerWarmPool"]
    assert pool["actions"] == ["autoscaling:PutWarmPool"]
    assert pool["resources"] == ["${var.worker_group_arn}"]
    assert "var.autoscaler_warm_pool" in pool["for_each"]
    assert config()["module"]["autoscaler"]["autoscaler_warm_pool"] == "${var.autoscaler_warm_pool}"
    template = (AUTOSCALER_TEMPLATES / "autoscaler.toml.tftpl").read_text(encoding="utf-8")
    assert 'state_file = ${jsonencode("ssm:${state_name}")}' in template
    assert "warm_pool = ${warm_pool}" in template


def test_both_roles_may_pull_every_ecr_image_they_run() -> None:
    # An ECR image whose repository the role may not pull from fails the
    # registry login under set -e, and the launch hook abandons the instance.
    for doc in ("worker", "autoscaler"):
        statements = _dynamic_statements(f"aws_iam_policy_document.{doc}")
        assert statements["PullImages"]["resources"] == "${var.ecr_pull_arns}", doc
        assert "var.ecr_pull_arns" in statements["EcrLogin"]["for_each"], doc
    # Both modules are given the images module's list ...
    for module in ("worker_group", "autoscaler"):
        assert config()["module"][module]["ecr_pull_arns"] == "${module.images.pull_arns}", module
    assert config()["modules"]["images"]["output"]["pull_arns"]["value"] == "${local.ecr_pull_arns}"
    pulls = config()["locals"]["ecr_pull_arns"]
    for source in ("aws_ecr_repository.this", "local.image_ecr_arns", "var.repository_arns"):
        assert source in pulls, source
    image_arns = config()["locals"]["image_ecr_arns"]
    assert "var.images" in image_arns
    # ... built from both images and the extra repositories.
    images = config()["module"]["images"]
    assert images["images"] == ["${var.worker_image}", "${var.autoscaler_image}"]
    assert images["repository_arns"] == "${var.ecr_repository_arns}"


def test_every_fleet_setting_given_to_the_worker_is_read() -> None:
    # A FLEET_* variable the code never reads is a setting that silently does nothing.
    source = "\n".join(
        p.read_text(encoding="utf-8")
        for pkg in ("worker", "fleet", "fleetctl")
        for p in (ROOT / pkg).rglob("*.py")
    )
    read_by_name = set(re.findall(r"[\"'](FLEET_[A-Z0-9_]+)[\"']", source))
    settings = {f"FLEET_{name.upper()}" for name in WorkerSettings.model_fields}
    given = {
        name
        for local in ("worker_env", "oip_env", "jobs_env")
        for name in re.findall(r"\b(FLEET_[A-Z0-9_]+)\s*=", config()["locals"][local])
    }
    run_script = (TEMPLATES / "worker-run.sh.tftpl").read_text(encoding="utf-8")
    given |= set(re.findall(r"(FLEET_[A-Z0-9_]+)=", run_script))
    assert {"FLEET_MODELS", "FLEET_INSTANCE_ID", "FLEET_LIFECYCLE_HOOK"} <= given
    unread = sorted(given - settings - read_by_name)
    assert not unread, f"set for the worker but read by nothing: {unread}"
    # The example in worker_env's description is a real setting too.
    described = re.findall(r"FLEET_[A-Z0-9_]+", config()["variable"]["worker_env"]["description"])
    assert described and not set(described) - settings - read_by_name, described


def test_heartbeats_read_the_instance_id_the_run_script_sets() -> None:
    service = (ROOT / "worker" / "service.py").read_text(encoding="utf-8")
    assert 'os.environ.get("FLEET_INSTANCE_ID")' in service
    run = (TEMPLATES / "worker-run.sh.tftpl").read_text(encoding="utf-8")
    assert re.search(r"FLEET_INSTANCE_ID=%s.*\$instance_id", run)
    assert "instance_id=$(imds instance-id)" in run


# ---------------------------------------------------------------------------
# Secrets and network
# ---------------------------------------------------------------------------

_SECRET_WORDS = re.compile(r"broker_url|password|secret|mq_url|msk_url", re.IGNORECASE)


def test_no_secret_in_user_data() -> None:
    for key, lt in resources("aws_launch_template").items():
        assert not _SECRET_WORDS.search(lt["user_data"]), key
    names = {path.name for path in shell_templates()}
    assert names == {
        f"{role}-{kind}.sh.tftpl"
        for role in ("worker", "autoscaler")
        for kind in ("run", "user-data")
    }
    for path in shell_templates():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(amqps?|kafka)://", text), path.name
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path.name
        assert "get-parameters-by-path" in text or "RUN_SCRIPT" in text, path.name
    # The broker URL reaches the instances only as SecureString parameters.
    # One exception: the autoscaler's policy state (times and instance counts,
    # written by the autoscaler itself), made holding nothing.
    for key, param in resources("aws_ssm_parameter").items():
        if key == "aws_ssm_parameter.policy_state":
            assert (param["type"], param["value"]) == ("String", "{}"), key
            continue
        assert param["type"] == "SecureString", key


def _rule_port(rule: dict[str, Any]) -> str:
    assert rule["from_port"] == rule["to_port"], rule
    return str(rule["from_port"])


def test_load_balancer_reaches_the_workers_on_the_oip_ports_only() -> None:
    alb, worker = "${aws_security_group.alb.id}", "${aws_security_group.worker.id}"
    oip, grpc = "${var.worker_oip_port}", "${var.worker_grpc_port}"
    egress = {
        key: rule
        for key, rule in resources("aws_vpc_security_group_egress_rule").items()
        if rule["security_group_id"] == alb
    }
    assert {k: _rule_port(r) for k, r in egress.items()} == {
        "aws_vpc_security_group_egress_rule.alb_to_worker": oip,
        "aws_vpc_security_group_egress_rule.alb_to_worker_grpc": grpc,
    }
    from_alb = {
        key: rule
        for key, rule in resources("aws_vpc_security_group_ingress_rule").items()
        if rule.get("referenced_security_group_id") == alb
    }
    assert {k: _rule_port(r) for k, r in from_alb.items()} == {
        "aws_vpc_security_group_ingress_rule.worker_from_alb": oip,
        "aws_vpc_security_group_ingress_rule.worker_grpc_from_alb": grpc,
    }
    for key in (*egress, *from_alb):
        rule = config()["resource"][key]
        assert worker in (rule["security_group_id"], rule.get("referenced_security_group_id")), key
        if "grpc" in key:
            assert rule["count"] == "${var.alb_grpc ? 1 : 0}", key
        else:
            assert "count" not in rule and "for_each" not in rule, key
    # The metrics port: from metrics_scrape_cidrs only.
    for key, rule in resources("aws_vpc_security_group_ingress_rule").items():
        if "worker_http_port" in json.dumps(rule):
            assert key == "aws_vpc_security_group_ingress_rule.scrape", key
            assert rule["cidr_ipv4"] == "${each.value.cidr}"
            assert "referenced_security_group_id" not in rule
    assert "var.metrics_scrape_cidrs" in config()["locals"]["scrape_rules"]


def test_security_groups_open_only_what_is_used() -> None:
    for key, rule in resources("aws_vpc_security_group_ingress_rule").items():
        assert rule.get("cidr_ipv4") != "0.0.0.0/0", key
        assert rule["ip_protocol"] == "tcp", key
        assert rule["from_port"] == rule["to_port"], key
    for key, rule in resources("aws_vpc_security_group_egress_rule").items():
        assert rule["ip_protocol"] == "tcp", key
    assert not resources("aws_security_group_rule")
    for key, sg in resources("aws_security_group").items():
        assert "ingress" not in sg and "egress" not in sg, key


def test_warm_pool_defaults_to_one_scale_out_step() -> None:
    # AWS's default cap (max_size) keeps max_size - desired instances warm:
    # 7 stopped GPU instances with the defaults, all launched once at apply.
    (warm,) = block(config()["resource"]["aws_autoscaling_group.worker"], "warm_pool")
    assert warm["max_group_prepared_capacity"] == (
        "${coalesce(var.warm_pool_max_prepared_capacity, var.warm_pool_min_size)}"
    )
    variables = config()["variable"]
    assert variables["warm_pool_max_prepared_capacity"]["default"] is None
    assert int(variables["warm_pool_min_size"]["default"]) == int(
        variables["worker_initial_capacity"]["default"]
    )
    assert "first scale-out step" in variables["warm_pool_min_size"]["description"]


def test_ami_owners_are_variables() -> None:
    for role in ("worker", "autoscaler"):
        ami = config()["data"][f"aws_ami.{role}"]
        assert ami["owners"] == f"${{var.{role}_ami_owners}}", role
        assert config()["variable"][f"{role}_ami_owners"]["default"] == ["amazon"]


def test_images_are_required_with_a_tag_and_the_autoscaler_gets_the_cpu_image() -> None:
    variables = config()["variable"]
    for name in ("worker_image", "autoscaler_image"):
        assert "default" not in variables[name], name
        (rule,) = block(variables[name], "validation")
        assert "local.image_reference_pattern" in rule["condition"], name
    user_data = config()["resource"]["aws_launch_template.autoscaler"]["user_data"]
    autoscaler_tf = (MODULES / "autoscaler" / "autoscaler.tf").read_text()
    assert re.search(r"\bimage\s+= var\.autoscaler_image\n", autoscaler_tf)
    call = config()["module"]["autoscaler"]
    assert call["autoscaler_image"] == "${var.autoscaler_image}"
    assert "worker_image" not in call
    assert "worker_image" not in user_data
    pattern = config()["locals"]["image_reference_pattern"].replace("\\\\", "\\")
    good = [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/fleet/worker:0.1.0",
        "registry.example.com:5000/fleet/cpu:v1",
        "fleet/worker@sha256:" + "0" * 64,
        "fleet-worker:0.1.0@sha256:" + "a" * 64,
    ]
    bad = ["fleet-worker", "registry.example.com:5000/fleet/cpu", "", "fleet worker:1", "x:"]
    for image in good:
        assert re.fullmatch(pattern.strip("^$"), image), image
    for image in bad:
        assert not re.fullmatch(pattern.strip("^$"), image), image


def test_managed_broker_toggles() -> None:
    (rule,) = block(config()["variable"]["broker"], "validation")
    for kind in ("external", "rabbitmq", "kafka"):
        assert f'"{kind}"' in rule["condition"]
    mq = config()["resource"]["aws_mq_broker.this"]
    assert mq["engine_type"] == "RabbitMQ"
    assert mq["publicly_accessible"] is False
    assert "var.broker" in mq["count"]
    msk = config()["resource"]["aws_msk_cluster.this"]
    assert "var.broker" in msk["count"]
    (enc,) = block(msk, "encryption_info")
    assert enc["encryption_at_rest_kms_key_arn"] == "${var.kms_key_arn}"
    assert config()["module"]["broker"]["kms_key_arn"] == "${aws_kms_key.fleet.arn}"


def test_checkov_baseline_gives_a_reason_for_every_accepted_finding() -> None:
    baseline = json.loads((TF / ".checkov.baseline").read_text(encoding="utf-8"))
    for entry in baseline["failed_checks"]:
        assert (TF / entry["file"].lstrip("/")).is_file(), entry["file"]
        for finding in entry["findings"]:
            # checkov names a counted resource with its index, e.g.
            # module.broker.aws_mq_broker.this[0], and a module's resources
            # with the module's address, in the module's own files
            resource = re.sub(r"\[\d+\]$", "", finding["resource"])
            module, _, address = resource.partition(".")[2].partition(".")
            assert resource.startswith("module."), finding["resource"]
            assert entry["file"].startswith(f"/modules/{module}/"), (entry["file"], resource)
            declared = config()["modules"][module]
            assert address in declared["resource"] or address in declared["data"], resource
            reasons = finding.get("reasons", {})
            assert set(reasons) == set(finding["check_ids"]), finding["resource"]
            assert all(len(r.strip()) > 40 for r in reasons.values()), finding["resource"]


# ---------------------------------------------------------------------------
# README tables, provider lock, state backend
# ---------------------------------------------------------------------------


def test_readme_tables_are_the_generated_ones() -> None:
    from tests.deploy import tf_tables

    variables, outputs = tf_tables.tables_in_readme((TF / "README.md").read_text("utf-8"))
    hint = "regenerate: .venv/bin/python -m tests.deploy.tf_tables"
    assert variables == tf_tables.variables_table(), hint
    assert outputs == tf_tables.outputs_table(), hint


def test_provider_lock_is_committed_and_within_the_constraint() -> None:
    lock = _load(TF / ".terraform.lock.hcl")
    (providers,) = lock["provider"]
    (aws,) = [body for name, body in providers.items() if name.endswith("hashicorp/aws")]
    major, minor, _ = (int(x) for x in aws["version"].split("."))
    assert (5, 60) <= (major, minor) < (6, 0)
    required = _load(TF / "versions.tf")["terraform"][0]["required_providers"][0]["aws"]
    assert required["version"] == ">= 5.60, < 6.0"
    hashes = aws["hashes"]
    # One h1 (the unpacked package checked by terraform init here) and a zh per
    # platform's release archive, so that init on any platform can verify it.
    assert sum(h.startswith("h1:") for h in hashes) >= 1
    assert sum(h.startswith("zh:") for h in hashes) >= 5
    assert ".terraform.lock.hcl" not in (ROOT / ".gitignore").read_text(encoding="utf-8")


def test_remote_state_example_is_encrypted_and_locked() -> None:
    example = _load(TF / "backend.tf.example")
    (terraform,) = example["terraform"]
    (backend,) = terraform["backend"]
    s3 = backend["s3"]
    assert s3["encrypt"] is True and s3["use_lockfile"] is True
    assert {"bucket", "key", "region"} <= set(s3)
    # Not active by default: a plain `terraform init` keeps local state.
    assert not any("backend" in str(_load(p).get("terraform", "")) for p in TF.glob("*.tf"))


def test_every_broker_variant_is_checked_by_checkov() -> None:
    variants = {
        p.stem: p.read_text(encoding="utf-8") for p in (TF / "tests" / "variants").glob("*.tfvars")
    }
    assert set(variants) == {"external", "rabbitmq", "kafka"}
    for kind, text in variants.items():
        assert f'broker = "{kind}"' in re.sub(r"\s+", " ", text), kind
    script = (ROOT / "scripts" / "deploy-checks.sh").read_text(encoding="utf-8")
    assert '--var-file "$var_file"' in script and "tests/variants/*.tfvars" in script


async def test_liveness_answers_while_readiness_fails() -> None:
    # What the image's HEALTHCHECK (/healthz) checks must stay 200 while the
    # broker is away.
    import aiohttp

    from worker.health import HealthServer

    server = HealthServer(ready=lambda: (False, "broker disconnected"), metrics=lambda: b"")
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}{HEALTH_PATH}") as live:
                assert live.status == 200
            async with session.get(f"http://127.0.0.1:{port}{READY_PATH}") as ready:
                assert ready.status == 503
                assert "broker disconnected" in await ready.text()
    finally:
        await server.stop()


def test_readme_tfvars_set_declared_variables_and_every_required_one() -> None:
    readme = (TF / "README.md").read_text(encoding="utf-8")
    match = re.search(r"cat > fleet\.tfvars <<'VARS'\n(.*?)\n\s*VARS\n", readme, re.DOTALL)
    assert match, "the README writes fleet.tfvars"
    text = "\n".join(line.strip() for line in match.group(1).splitlines())
    values = _clean(hcl2.loads(text))
    variables = config()["variable"]
    assert set(values) <= set(variables), set(values) - set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(values), required - set(values)
    for name in ("worker_image", "autoscaler_image"):
        pattern = config()["locals"]["image_reference_pattern"].replace("\\\\", "\\")
        assert re.fullmatch(pattern.strip("^$"), values[name]), name
