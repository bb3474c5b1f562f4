"""``fleet models quantize`` and ``fleet models convert``: precision variants of a model.

Each writes the model's next version into a local repository, or refuses with
``AccuracyGateFailed`` (and writes nothing) when the variant's held-out accuracy
falls below the source's by more than ``--margin``; see :mod:`worker.variants`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers

if TYPE_CHECKING:
    from worker.variants import Method

DEFAULT_MARGIN = 0.01  # worker.variants.DEFAULT_MARGIN, without importing ONNX at parse time


def add_commands(msub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``quantize`` and ``convert`` under ``fleet models``."""
    q = msub.add_parser(
        "quantize",
        help="write an INT8 variant of a model as its next version, behind an accuracy gate",
        formatter_class=HelpFormatter,
    )
    _common(q)
    q.add_argument(
        "--mode",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: activations quantized per batch at run time; static: activation"
        " ranges calibrated on rows of the model's own data",
    )
    q.set_defaults(handler=quantize)
    c = msub.add_parser(
        "convert",
        help="write an FP16 variant of a model as its next version, behind an accuracy gate",
        formatter_class=HelpFormatter,
    )
    _common(c)
    c.add_argument(
        "--fp16",
        action="store_true",
        required=True,
        help="weights and arithmetic in FP16; inputs and outputs stay FP32",
    )
    c.set_defaults(handler=convert)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model name (digits or mlp)")
    p.add_argument("--repository", type=Path, default=DEFAULT_MODELS, help="local model repository")
    p.add_argument(
        "--from",
        dest="source_version",
        metavar="VERSION",
        help="source version (default: the newest version that is not itself a variant)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="largest held-out accuracy drop accepted, as a fraction",
    )


def quantize(args: argparse.Namespace) -> int:
    return _make(args, "int8-static" if args.mode == "static" else "int8-dynamic")


def convert(args: argparse.Namespace) -> int:
    return _make(args, "fp16")


def _make(args: argparse.Namespace, method: Method) -> int:
    from worker.variants import make_variant

    variant = make_variant(
        args.repository,
        args.model,
        method,
        source_version=args.source_version,
        margin=args.margin,
    )
    print(
        f"{variant.model} version {variant.version}: {variant.method} variant of version"
        f" {variant.source_version}; held-out accuracy {variant.accuracy:.4f}"
        f" (source {variant.source_accuracy:.4f}, margin {variant.margin})"
    )
    print(variant.path)
    return 0


__all__ = ["add_commands", "convert", "quantize"]
