"""End to end on this machine, a fleet that serves only the Open Inference
Protocol over HTTP: no request goes through the broker, which carries only the
heartbeats (RabbitMQ, where the autoscaler reads arrivals from the backlog and
the answer rate, and Kafka, where it reads the topic's produce rate and adds
the heartbeats' synchronous arrivals).

Open-loop HTTP traffic past one instance's capacity, spread over the ready
workers as a load balancer would (a 503 is retried on the next) → the
autoscaler sees it in the heartbeats and the ``local`` actuator starts workers
→ the new workers take traffic → the traffic stops → after the scale-in
cooldown the extra workers stop by SIGTERM (exit 0) → every request was
answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from autoscaler.actuators.local import LocalActuator
from autoscaler.config import parse_config
from autoscaler.loop import Autoscaler, from_config
from fleet.heartbeat import Heartbeat
from tests.autoscaler.test_e2e_scaling import PER_INSTANCE_RPS, Recorder, _until, e2e_config

RATE = 300.0  # requests/s offered: three instances' worth at PER_INSTANCE_RPS
LOAD_S = 30.0  # at most; the load stops once a new worker has served
BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
).encode()


class Balancer:
    """Round robin over the workers whose heartbeat says ready, found by the
    OIP port their heartbeats carry; a 503 (full) or a refused connection is
    tried on the next worker."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.ports: dict[str, int] = {}  # worker id -> OIP port
        self.served: Counter[str] = Counter()
        self.retried = 0
        self._turn = itertools.count()

    def observe(self, beat: Heartbeat, _at: float) -> None:
        if beat.state == "ready" and beat.oip_port:
            self.ports[beat.worker_id] = beat.oip_port
        else:
            self.ports.pop(beat.worker_id, None)

    async def call(self, http: aiohttp.ClientSession) -> None:
        for _ in range(50):
            ready = sorted(self.ports.items())
            if ready:
                wid, port = ready[next(self._turn) % len(ready)]
                url = f"http://127.0.0.1:{port}/v2/models/{self.model}/infer"
                try:
                    async with http.post(url, data=BODY) as r:
                        if r.status == 200:
                            doc = await r.json()
                            assert {o["name"] for o in doc["outputs"]} == {"label", "probabilities"}
                            self.served[wid] += 1
                            return
                        assert r.status == 503, (r.status, await r.text())
                except aiohttp.ClientConnectionError:
                    pass  # a worker leaving: as a load balancer, try the next
            self.retried += 1
            await asyncio.sleep(0.02)
        raise AssertionError("no worker answered in 50 tries")


# alone under xdist: it starts and stops worker processes and measures its cycle in polls
@pytest.mark.exclusive
@pytest.mark.timeout(120)
async def test_http_traffic_alone_scales_out_and_back_in(
    real_broker: str, model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    broker = real_broker
    model = f"{unique_model}-digits"
    raw = e2e_config(broker, model, model_repo, tmp_path / "workers")
    raw["actuator"]["extra_args"] += ["--oip-port", "0"]
    cfg = parse_config(raw)
    rec = Recorder()
    balancer = Balancer(model)
    scaler: Autoscaler = await from_config(cfg)
    scaler.on_decision = rec
    scaler.signals.add_listener(balancer.observe)
    act = scaler.actuator
    assert isinstance(act, LocalActuator)
    stop = asyncio.Event()
    await scaler.start()
    loop_task = asyncio.create_task(scaler.run(stop))
    try:
        await _until(lambda: len(balancer.ports) == 1, 40, "one ready worker", rec)
        (first_worker,) = balancer.ports
        load_at = time.monotonic()
        calls: list[asyncio.Future[None]] = []
        async with aiohttp.ClientSession() as http:
            # open loop: RATE requests/s whatever the answers, until a worker
            # the autoscaler started has served (or LOAD_S)
            # (sent by the clock, not by sleeps: a slow loop sends several at once)
            while time.monotonic() - load_at < LOAD_S:
                due = int((time.monotonic() - load_at) * RATE) + 1
                calls += [
                    asyncio.ensure_future(balancer.call(http)) for _ in range(due - len(calls))
                ]
                if len(balancer.served) > 1 and balancer.served.total() > 200:
                    break
                await asyncio.sleep(1 / RATE)
            load_s = time.monotonic() - load_at
            await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert len(balancer.served) > 1, (balancer.served, rec.polls[-3:])
        assert balancer.served.total() == len(calls)  # every request answered
        out = rec.first(lambda s, d: d.direction == "out", load_at)
        assert out is not None
        # the autoscaler saw the HTTP traffic as arrivals (no broker traffic at all)
        rates = [s.arrival_rate or 0.0 for t, s, _ in rec.polls if t >= load_at]
        assert max(rates) > 1.1 * PER_INSTANCE_RPS, rates
        assert len(calls) / load_s > 1.1 * PER_INSTANCE_RPS  # what was offered

        # the traffic has stopped: back to the floor by SIGTERM
        await _until(lambda: act.status()["desired"] == 1, 40, "scale-in", rec)
        await asyncio.wait_for(act.wait_stopped(), 25)
        assert act.stopped_by_sigterm and all(rc == 0 for _, rc in act.stopped_by_sigterm)
        assert act.killed == 0 and act.unexpected_exits == 0
        assert [w.worker_id for w in act.workers] == [first_worker]
    finally:
        stop.set()
        await asyncio.wait_for(loop_task, 10)
        await scaler.close()
