"""``fleet models``: build without the tools extra, and push to S3."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleetctl.cli import build_parser


def _run(*argv: str) -> int:
    """One ``fleet`` command's handler, in this process (no signal handlers installed)."""
    args = build_parser().parse_args(list(argv))
    return int(args.handler(args))


@pytest.mark.unit
@pytest.mark.parametrize("absent", ["sklearn", "skl2onnx"])
def test_build_without_the_tools_extra_says_what_to_install(
    absent: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, absent, None)  # `import <absent>` raises ImportError
    assert _run("models", "build", str(tmp_path / "models")) == 2
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "pip install 'inference-fleet[tools]'" in lines[0]
    assert ("scikit-learn" if absent == "sklearn" else "skl2onnx") in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.onnx"))


@pytest.mark.unit
def test_build_keeps_built_models_without_the_tools_extra(
    built_models: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing to build: the libraries that build are not needed.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert _run("models", "build", str(built_models)) == 0
    out, _err = capsys.readouterr()
    printed = [Path(line) for line in out.splitlines() if line.endswith("model.onnx")]
    assert sorted(p.parent.parent.name for p in printed) == ["digits", "mlp"]
