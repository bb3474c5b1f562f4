"""docs/oip.md: its Python example runs as shown, its curl body is answered."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT
from worker.service import Worker

DOC = ROOT / "docs" / "oip.md"


def _blocks(kind: str) -> list[str]:
    """The fenced blocks whose fence names ``kind`` ("" for none)."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if current is None and line.startswith("```"):
            current = []
            blocks.append((line[3:].strip(), current))
        elif current is not None and line == "```":
            current = None
        elif current is not None:
            current.append(line)
    return ["\n".join(lines) + "\n" for k, lines in blocks if k == kind]


@pytest.mark.memory
@pytest.mark.parametrize("index", [0, 1], ids=["http", "grpc"])
def test_the_python_example_runs(tmp_path: Path, index: int) -> None:
    example = _blocks("python")[index]
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "[info" not in line]  # logs
    assert lines[0] == "ready: True" and lines[1].startswith("r-1 ["), proc.stdout


@pytest.mark.memory
async def test_the_curl_body_is_answered(oip_worker: Worker, unique_model: str) -> None:
    curl = next(b for b in _blocks("") if b.startswith("curl"))
    body = json.loads(re.search(r"-d '(.*)'", curl, re.S).group(1))  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{oip_worker.oip_port}/v2/models/{unique_model}-digits/infer"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["id"] == "r-1"
    assert {o["name"] for o in doc["outputs"]} == {"label", "probabilities"}


@pytest.mark.memory
async def test_the_readmes_curl_commands_are_answered(
    oip_worker: Worker, unique_model: str
) -> None:
    """README.md's two ``curl`` commands, pointed at this test's worker."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "/v2/" in b]
    script = block.replace("localhost:8000", f"127.0.0.1:{oip_worker.oip_port}").replace(
        "/models/digits/", f"/models/{unique_model}-digits/"
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euc", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    status, body = out.decode().split("\n", 1)
    assert status == "200"
    doc = json.loads(body)
    assert doc["id"] == "r-1" and doc["model_name"] == f"{unique_model}-digits"
    assert {o["name"] for o in doc["outputs"]} == {"label", "probabilities"}
