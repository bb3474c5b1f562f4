"""What TLS and SASL cost: the request path over each broker's plaintext port
against its TLS and SASL listeners, in the same run.

    .venv/bin/python benchmarks/tls.py [--duration 8] [--rounds 2] [--in-flight 64]

Variants: RabbitMQ plaintext (``amqp://guest``) and over TLS as the
least-privilege user (``amqps://fleet-app``); Kafka plaintext, over mutual TLS
(``kafka+ssl://``, client certificate) and over SASL_SSL with SCRAM-SHA-512
(``kafka+sasl+ssl://``). For each, one ``fleet worker`` process (mlp) and one
client process drive ``--in-flight`` requests in flight (closed loop, the
saturation rate) for ``--duration`` seconds. The variants run in turn, round
after round, so a drift of the machine's speed spreads over all of them; each
variant's figure is its median over the rounds, and its ratio is against the
same broker's plaintext port.

The URLs and passwords come from the environment (FLEET_TEST_AMQP_URL,
FLEET_TEST_AMQPS_APP_URL, FLEET_TEST_KAFKA_URL, FLEET_TEST_KAFKA_SSL_URL,
FLEET_TEST_KAFKA_SASL_SSL_URL and their _PASSWORD variables:
``scripts/kafka.sh tls-env`` and ``scripts/rabbitmq.sh tls-env`` print them).
Loopback only; every run is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import _drive, served  # noqa: E402
from worker.zoo import build_all  # noqa: E402

VARIANTS = [  # (name, URL variable, plaintext baseline)
    ("amqp", "FLEET_TEST_AMQP_URL", "amqp"),
    ("amqps (fleet-app)", "FLEET_TEST_AMQPS_APP_URL", "amqp"),
    ("kafka", "FLEET_TEST_KAFKA_URL", "kafka"),
    ("kafka+ssl (mTLS)", "FLEET_TEST_KAFKA_SSL_URL", "kafka"),
    ("kafka+sasl+ssl (SCRAM)", "FLEET_TEST_KAFKA_SASL_SSL_URL", "kafka"),
]


def _one(url: str, password: str | None, models: Path, duration: float, in_flight: int) -> float:
    """Requests/s at saturation with a fresh worker on ``url``."""
    if password is None:
        os.environ.pop("FLEET_BROKER_PASSWORD", None)
    else:
        os.environ["FLEET_BROKER_PASSWORD"] = password  # workers and clients read it
    with served(url, models, "bench-tls"):
        _drive(url, 2, 16, None, 1)  # warm
        return _drive(url, duration, in_flight, None, 1).rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    missing = [var for _, var, _ in VARIANTS if not os.environ.get(var)]
    if missing:
        print(f"set {', '.join(missing)} (scripts/*.sh tls-env)", file=sys.stderr)
        return 2
    models = ROOT / ".cache" / "bench-models"
    build_all(models)
    rates: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for round_ in range(args.rounds):
        for name, var, _ in VARIANTS:
            url, password = os.environ[var], os.environ.get(f"{var}_PASSWORD")
            rps = _one(url, password, models, args.duration, args.in_flight)
            rates[name].append(rps)
            print(f"round {round_ + 1}: {name}: {rps:,.0f} req/s", file=sys.stderr)
    print(f"{'variant':<24} {'req/s':>9} {'vs plaintext':>13}  (median of {args.rounds} rounds)")
    for name, _, base in VARIANTS:
        rps, plain = statistics.median(rates[name]), statistics.median(rates[base])
        print(f"{name:<24} {rps:>9,.0f} {rps / plain:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
