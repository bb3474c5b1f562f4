"""``fleet demo --http``: the demo's traffic over the workers' Open Inference
Protocol HTTP ports, spread round-robin, a 503 retried on the next worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from fleet.errors import ConfigError, DeadlineExceeded, Overloaded, Unavailable
from fleetctl.cli import build_parser
from fleetctl.demo import WorkerLogs, spawn_workers
from producer.loadgen import HEADER_LENGTH, OipBalancer, drive_http
from tests.conftest import broker_url_for
from worker import oip_codec

ROOT = Path(__file__).resolve().parents[2]
INPUTS = {"input": np.arange(4, dtype=np.float32).reshape(1, 4)}


def _fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetctl", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _assert_answered_over_http(proc: subprocess.CompletedProcess[str], workers: int) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"over OIP HTTP, round-robin across {workers} worker(s)" in proc.stderr
    answered = re.search(r"summary: (\d+) answered over OIP HTTP in", proc.stdout)
    assert answered and int(answered.group(1)) > 0, proc.stdout
    assert "errors: none" in proc.stdout and "lost: 0" in proc.stdout
    assert "latency p50" in proc.stdout and "mean batch size n/a" in proc.stdout
    spread = re.search(r"tries per worker: (.*);", proc.stdout)
    assert spread, proc.stdout
    tries = [int(t.rsplit(" ", 1)[1]) for t in spread.group(1).split(", ")]
    assert len(tries) == workers and min(tries) > 0, spread.group(0)


# ---------------------------------------------------------------- the command


@pytest.mark.unit
def test_help_describes_the_http_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--http" in text and "Open Inference Protocol" in text
    assert "round-robin" in text and "503" in text


@pytest.mark.memory
def test_demo_over_http_on_memory_answers_everything(built_models: Path) -> None:
    proc = _fleet(
        "demo", "--http", "--models", str(built_models), "--workers", "2",
        "--duration", "2", "--concurrency", "32",
    )  # fmt: skip
    _assert_answered_over_http(proc, workers=2)
    assert "[" in proc.stderr and "batch   n/a" in proc.stderr  # the live display


@pytest.mark.rabbitmq
def test_demo_over_http_with_worker_processes(model_repo: Path, unique_model: str) -> None:
    proc = _fleet(
        "demo", "--http", "--broker", broker_url_for("amqp"), "--models", str(model_repo),
        "--model", f"{unique_model}-mlp", "--workers", "2", "--duration", "1",
        "--concurrency", "16", "--rate", "400",
    )  # fmt: skip
    _assert_answered_over_http(proc, workers=2)


# ---------------------------------------------------------------- the balancer


Handler = Callable[[web.Request, bytes], web.Response]  # the request and its body


@asynccontextmanager
async def _servers(*handlers: Handler) -> AsyncIterator[list[str]]:
    """One tiny OIP ``/infer`` endpoint per handler, on 127.0.0.1; their URLs."""
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for handle in handlers:

        async def infer(request: web.Request, handle: Handler = handle) -> web.Response:
            return handle(request, await request.read())

        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


def _answering(hits: list[str], name: str, *, full: int = 0, status: int = 200) -> Handler:
    """Records each call as ``name``; answers 503 to the first ``full`` calls,
    then ``status``, checking the body as a worker decodes it."""

    def handle(request: web.Request, raw: bytes) -> web.Response:
        hits.append(name)
        body = oip_codec.decode_infer(raw, request.headers.get(HEADER_LENGTH))
        (tensor,) = body.inputs
        assert tensor.name == "input" and tensor.shape == (1, 4)
        assert tensor.to_numpy().tolist() == INPUTS["input"].tolist()
        assert body.binary_output and body.timeout_s is not None and 0 < body.timeout_s <= 5
        if hits.count(name) <= full:
            return web.json_response({"error": "full"}, status=503)
        if status != 200:
            return web.json_response({"error": f"status {status}"}, status=status)
        return web.Response(body=b'{"outputs":[]}', content_type="application/json")

    return handle


@pytest.mark.unit
async def test_round_robin_and_a_503_retried_on_the_next_worker() -> None:
    hits: list[str] = []
    async with (
        _servers(_answering(hits, "a", full=1), _answering(hits, "b")) as urls,
        OipBalancer(urls) as balancer,
    ):
        for _ in range(4):
            assert await balancer.infer("digits", INPUTS, timeout=5) == b'{"outputs":[]}'
    # 1st: a is full, b answers; then b, a, b in turn
    assert hits == ["a", "b", "b", "a", "b"]
    assert balancer.retried == 1
    assert [balancer.sent[u] for u in urls] == [2, 3]


@pytest.mark.unit
async def test_retries_are_bounded_when_every_worker_is_full() -> None:
    hits: list[str] = []
    async with (
        _servers(_answering(hits, "a", full=99), _answering(hits, "b", full=99)) as urls,
        OipBalancer(urls, retries=3) as balancer,
    ):
        with pytest.raises(Overloaded, match="HTTP 503: full"):
            await balancer.infer("digits", INPUTS, timeout=5)
    assert hits == ["a", "b", "a", "b"]


@pytest.mark.unit
async def test_a_deadline_is_not_retried() -> None:
    hits: list[str] = []
    async with (
        _servers(_answering(hits, "a", status=504), _answering(hits, "b")) as urls,
        OipBalancer(urls) as balancer,
    ):
        with pytest.raises(DeadlineExceeded, match="HTTP 504: status 504"):
            await balancer.infer("digits", INPUTS, timeout=5)
    assert hits == ["a"] and balancer.retried == 0


@pytest.mark.unit
async def test_an_unreachable_worker_is_retried_on_the_next() -> None:
    dead = "http://127.0.0.1:9"  # the discard port: nobody listens
    hits: list[str] = []
    async with _servers(_answering(hits, "b")) as urls, OipBalancer([dead, *urls]) as balancer:
        await balancer.infer("digits", INPUTS, timeout=5)
    assert hits == ["b"] and balancer.retried == 1
    async with OipBalancer([dead], retries=1) as nobody:
        with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9\b"):
            await nobody.infer("digits", INPUTS, timeout=5)
    assert nobody.sent[dead] == 2


@pytest.mark.unit
async def test_drive_http_measures_like_the_queue_path() -> None:
    hits: list[str] = []
    async with (
        _servers(_answering(hits, "a", full=2), _answering(hits, "b")) as urls,
        OipBalancer(urls) as balancer,
    ):
        result = await drive_http(
            balancer, "digits", lambda _i: INPUTS, duration=0.3, concurrency=4, timeout=5
        )
    assert result.ok > 10 and result.errors == {} and result.lost == 0
    assert result.sent == result.ok and not result.batch_known
    assert balancer.retried == 2 and hits.count("a") > 2 and hits.count("b") > 2
    assert "batch   n/a" in result.line() and "errors 0" in result.line()


# ---------------------------------------------------------------- worker processes' ports


def _line(**fields: object) -> str:
    return f"print({json.dumps(json.dumps(fields))}, file=sys.stderr, flush=True)"


async def _ports(tmp_path: Path, script: str, timeout: float = 10) -> list[int]:
    """The ports fake worker processes running ``script`` report."""
    procs = await spawn_workers(
        "amqp://u:p@127.0.0.1/",
        tmp_path,
        1,
        command=[sys.executable, "-c", "import sys, time\n" + script],
        stderr=asyncio.subprocess.PIPE,
    )
    logs = WorkerLogs(procs, ["demo-0"])
    try:
        return await logs.oip_ports(timeout)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        await logs.close()


@pytest.mark.unit
async def test_a_worker_process_reports_its_port(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = "\n".join(
        [
            _line(event="loading", level="info"),
            _line(event="disk slow", level="warning"),
            _line(event="worker ready", level="info", oip_port=4321, http_port=1),
        ]
    )
    assert await _ports(tmp_path, script) == [4321]
    err = capfd.readouterr().err
    assert "disk slow" in err and "loading" not in err  # warnings passed on, info not


@pytest.mark.unit
@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("sys.exit(3)", "worker demo-0 exited with code 3 before it reported ready"),
        ("time.sleep(30)", "worker demo-0 did not report ready with an OIP port within 0.5s"),
        (_line(event="worker ready", oip_port=None), "worker demo-0 is ready but reported no"),
    ],
    ids=["exits", "silent", "no-port"],
)
async def test_a_worker_that_reports_no_port_is_a_clear_error(
    tmp_path: Path, script: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await _ports(tmp_path, script + "\ntime.sleep(30)", timeout=0.5)
