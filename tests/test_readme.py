"""The code in the README runs, and the public API is what the docs promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.memory
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_blocks_run(index: int, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(BLOCKS[index])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "every README example prints what it got"


@pytest.mark.unit
def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.unit
@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("producer", {"Client", "ClientStats", "Jobs", "JobStatus", "SyncClient"}),
        (
            "fleet.errors",
            {
                "FleetError",
                "InvalidArgument",
                "DecodeError",
                "UnsupportedVersion",
                "LimitExceeded",
                "ModelNotFound",
                "DeadlineExceeded",
                "Overloaded",
                "Unavailable",
                "Internal",
                "ConfigError",
                "JobNotFound",
                "JobCancelled",
            },
        ),
    ],
)
def test_exported_members(module: str, names: set[str]) -> None:
    mod = __import__(module, fromlist=["__all__"])
    assert names <= set(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name)


@pytest.mark.unit
def test_error_tree_retriable_flags() -> None:
    from fleet import errors

    assert errors.Overloaded("x").retriable and errors.Unavailable("x").retriable
    for cls in (errors.InvalidArgument, errors.ModelNotFound, errors.DeadlineExceeded):
        assert not cls("x").retriable
    rebuilt = errors.error_from_code(errors.ErrorCode.OVERLOADED, "full", True)
    assert isinstance(rebuilt, errors.Overloaded)
    assert isinstance(errors.error_from_code(999, "?", False), errors.Internal)
