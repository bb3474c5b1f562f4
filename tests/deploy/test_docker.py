"""The worker images, the compose stack, Prometheus and the Grafana dashboard,
parsed and checked for the essentials (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.metrics import AutoscalerMetrics
from worker.metrics import WorkerMetrics

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages; the global ARGs before the first FROM are not in any."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults: what FROM may use."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name] = default
    return out


def base_image(name: str, stage: list[Instruction]) -> str:
    """A stage's base with the global ARGs' defaults put in."""
    image = stage[0].args.split()[0]
    for arg, default in global_args(parse_dockerfile(DOCKER / name)).items():
        image = image.replace(f"${{{arg}}}", default)
    return image


def image_is_pinned(image: str) -> bool:
    """An explicit tag that names a version: not latest, not a bare name."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


# ---------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_pinned(name: str) -> None:
    """Every stage's base is pinned by digest, the default of a build argument
    (BASE) included, so a user's build is reproducible; BASE may be overridden."""
    all_stages = stages(parse_dockerfile(DOCKER / name))
    names: set[str] = set()
    for stage in all_stages:
        words = stage[0].args.split()
        if words[0] not in names:  # FROM <earlier stage> needs no tag
            image = base_image(name, stage)
            assert "$" not in image, f"{name}: {words[0]} has no default"
            assert "@sha256:" in image, f"{name}: {image} is not pinned by digest"
            assert image_is_pinned(image.split("@")[0]), f"{name}: {image} names no version"
        if len(words) >= 3 and words[1].upper() == "AS":
            names.add(words[2])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_is_non_root_with_healthcheck_and_exec_entrypoint(name: str) -> None:
    final = stages(parse_dockerfile(DOCKER / name))[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, f"{name}: no USER in the final stage"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root"
    checks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert checks and not checks[-1].upper().startswith("NONE"), f"{name}: no HEALTHCHECK"
    assert "/healthz" in checks[-1]
    stop = [i.args for i in final if i.keyword == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"]), f"{name}: stop signal {stop}"
    (entrypoint,) = [i.args for i in final if i.keyword == "ENTRYPOINT"]
    argv = json.loads(entrypoint)  # exec form: the signal reaches the process
    assert isinstance(argv, list) and "fleet" in argv
    if argv[0].endswith("tini"):
        assert argv[1] == "--"


def test_gpu_image_on_a_slim_base_with_cuda_from_wheels() -> None:
    """CUDA and cuDNN come from onnxruntime-gpu's pip extras, on the same slim
    base as the CPU image: no multi-gigabyte CUDA base image."""
    instructions = parse_dockerfile(DOCKER / "Dockerfile")
    for stage in stages(instructions):
        image = base_image("Dockerfile", stage)
        assert "nvidia/cuda" not in image and "-slim" in image, image
    text = " ".join(i.args for i in instructions)
    assert re.search(r"ONNXRUNTIME_GPU_VERSION=\d+\.\d+\.\d+", text)
    assert '"onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}"' in text
    assert "pip uninstall -y onnxruntime" in text
    assert ".[gpu,aws,jobs]" in text


def test_both_images_share_one_base() -> None:
    bases = {name: global_args(parse_dockerfile(DOCKER / name))["BASE"] for name in DOCKERFILES}
    assert len(set(bases.values())) == 1, bases


def test_cpu_image_has_no_gpu_pieces() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert "nvidia" not in text and "onnxruntime-gpu" not in text
    assert "ARG EXTRAS=aws,jobs\n" in text and '".[${EXTRAS}]"' in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_models_from_a_mounted_directory_by_default(name: str) -> None:
    final = stages(parse_dockerfile(DOCKER / name))[-1]
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "FLEET_MODELS=/models" in env
    assert "FLEET_HTTP_HOST=0.0.0.0" in env
    # The Open Inference Protocol too, once FLEET_OIP_PORT names its port.
    assert "FLEET_OIP_HOST=0.0.0.0" in env
    (exposed,) = [i.args.split() for i in final if i.keyword == "EXPOSE"]
    assert {"8080", "8000", "8001"} <= set(exposed)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", ".cache"} <= lines


# ---------------------------------------------------------------------------
# compose.yaml
# ---------------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    assert {"rabbitmq", "kafka", "worker", "autoscaler", "prometheus", "grafana"} <= set(services())


def test_compose_images_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image")
        assert image, f"{name}: no image (tag what is built, too)"
        assert image_is_pinned(image) or ("build" in svc and not image.endswith(":latest")), (
            f"{name}: {image} is not pinned"
        )
        if "build" not in svc:
            assert image_is_pinned(image), f"{name}: {image}"


def test_compose_healthchecks() -> None:
    for name, svc in services().items():
        if svc.get("labels", {}).get("fleet.oneshot") == "true":
            assert svc.get("restart") == "no", name
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_compose_brokers() -> None:
    rabbit = services()["rabbitmq"]
    assert "management" in rabbit["image"]
    plugins = (DOCKER / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8")
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    kafka = services()["kafka"]
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in json.dumps(compose()).lower()


def test_compose_worker_drains_on_sigterm() -> None:
    for name in ("worker", "worker-gpu"):
        svc = services()[name]
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert "stop_grace_period" in svc
        assert svc["environment"]["FLEET_MODELS"] == "/models"
    gpu = services()["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_autoscaler_does_not_touch_aws() -> None:
    svc = services()["autoscaler"]
    (mount,) = svc["configs"]
    content = compose()["configs"][mount["source"]]["content"]
    assert re.search(r'kind = "(dry-run|local)"', content)
    assert 'kind = "ec2"' not in content
    assert svc["command"][:2] == ["autoscaler", "--config"]
    assert svc["command"][2] == mount["target"]


def test_prometheus_scrapes_everything() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    text = json.dumps(prom)
    compose_text = json.dumps(compose())
    port = re.search(r"port = (\d+)", compose()["configs"]["autoscaler"]["content"])
    assert port and f"autoscaler:{port.group(1)}" in text
    assert '"worker"' in text and "8080" in text
    for target in ("rabbitmq:15692", "grafana:3000", "localhost:9090"):
        assert target in text
    assert "prometheus.yml" in compose_text


# ---------------------------------------------------------------------------
# Grafana
# ---------------------------------------------------------------------------


def _metric_names() -> set[str]:
    """Sample names the worker and the autoscaler actually expose."""
    names: set[str] = set()
    for registry in (WorkerMetrics().registry, AutoscalerMetrics().registry):
        for family in registry.collect():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    return names


def test_dashboard_panels() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "fleet.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Throughput",
        "Latency percentiles",
        "Backlog",
        "Batch size",
        "Capacity",
        "GPU utilization",
    ):
        assert wanted in titles, wanted
    known = _metric_names()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            for metric in re.findall(r"\bfleet_[a-z_]+", target["expr"]):
                assert metric in known, f"{panel['title']}: {metric} is not exposed"


def test_grafana_provisioning() -> None:
    prov = DOCKER / "grafana" / "provisioning"
    source = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["uid"] == "prometheus"
    boards = yaml.safe_load((prov / "dashboards" / "fleet.yaml").read_text())
    path = boards["providers"][0]["options"]["path"]
    mounts = [shlex.split(v.replace(":", " "))[1] for v in services()["grafana"]["volumes"]]
    assert path in mounts


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_copy_every_package(name: str) -> None:
    """An image that leaves a package out installs, then fails at its first command."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        i.args.split()[0]
        for i in parse_dockerfile(DOCKER / name)
        if i.keyword == "COPY" and not i.args.startswith("--from")
    }
    assert packages <= copied, f"{name} does not copy {sorted(packages - copied)}"
