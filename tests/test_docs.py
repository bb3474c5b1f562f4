"""The examples in the docs run as they are shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = {
    "extending": ROOT / "docs" / "extending.md",
    "observability": ROOT / "docs" / "observability.md",
}


def _blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M)


EXAMPLES = [(name, i) for name, path in DOCS.items() for i in range(len(_blocks(path)))]


@pytest.mark.unit
def test_extending_shows_each_extension_point() -> None:
    assert len(_blocks(DOCS["extending"])) == 4


@pytest.mark.memory
@pytest.mark.parametrize(("doc", "index"), EXAMPLES)
def test_doc_examples_run(doc: str, index: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_blocks(DOCS[doc])[index], encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "every example prints what it got"
