"""The serving install (what the images install: ``.[gpu,aws]``, ``.[aws]``)
carries no model-building or plotting libraries: scikit-learn, SciPy,
matplotlib and skl2onnx are the ``tools`` extra, and the worker, the
autoscaler and the client start without them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"scikit-learn", "skl2onnx", "matplotlib", "onnxconverter-common"}
BLOCKED = ("sklearn", "skl2onnx", "matplotlib", "scipy")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_tools_are_an_extra_of_their_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert not _names(project["dependencies"]) & (TOOLS | {"scipy"})
    assert _names(extras["tools"]) == TOOLS
    for serving in ("gpu", "aws", "jobs"):
        assert not _names(extras[serving]) & (TOOLS | {"scipy"}), serving
    assert TOOLS <= _names(extras["dev"])  # the tests build the demo models


def test_images_install_no_tools() -> None:
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / "deploy" / "docker" / name).read_text(encoding="utf-8")
        # ".[gpu,aws]", or ".[${EXTRAS}]" with the default of ARG EXTRAS=...
        defaults = dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)$", text, re.MULTILINE))
        installs = [
            re.sub(r"\$\{(\w+)\}", lambda m, d=defaults: d[m[1]], extras)
            for extras in re.findall(r'pip install[^\n]*"\.\[([^\]]+)\]"', text)
        ]
        assert installs, name
        for extras in installs:
            assert not {"tools", "dev"} & set(extras.split(",")), (name, extras)


def test_compose_builds_the_models_with_the_tools() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker" / "compose.yaml").read_text("utf-8"))
    models = compose["services"]["models"]
    assert models["command"][:2] == ["models", "build"]
    assert "tools" in models["build"]["args"]["EXTRAS"].split(",")
    assert models["image"] != compose["services"]["worker"]["image"]
    assert "args" not in compose["services"]["worker"].get("build", {})


def test_serving_starts_without_the_tools() -> None:
    # Each of them imported, and the CLI's worker and autoscaler commands
    # parsed, in an interpreter where the tools cannot be imported.
    code = (
        "import sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None\n"
        "import producer, worker.service, worker.onnx_runtime, autoscaler.loop, fleetctl.cli\n"
        "for command in (['worker', '--help'], ['autoscaler', '--help']):\n"
        "    try:\n"
        "        fleetctl.cli.main(command)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (command, exc.code)\n"
        f"assert not any(sys.modules.get(n) for n in {BLOCKED!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "usage" in proc.stdout.lower()
