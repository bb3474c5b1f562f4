"""The model runtime interface, and the registry of runtimes a model may name.

A *runtime* turns one model version of the repository into something the
worker can serve: it checks a request's tensors against the model's signature,
runs a batch, and warms itself up before the worker reports ready. The worker
needs nothing else of it, so ONNX Runtime (:mod:`worker.onnx_runtime`) is one
runtime among any others installed.

A model's ``config.toml`` names its runtime (``runtime = "onnxruntime"``, the
default); runtimes come from the ``fleet.runtimes`` entry-point group, so a
package adds one by declaring an entry point that names a :class:`RuntimeSpec`::

    [project.entry-points."fleet.runtimes"]
    onnxruntime = "worker.onnx_runtime:SPEC"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from fleet.errors import ConfigError, InvalidArgument
from fleet.registry import Registry
from fleet.tensor import Tensor
from worker.config import CONFIG_FILE
from worker.repository import ModelSpec

Array = npt.NDArray[Any]
#: A batch's input (or output) arrays by tensor name; dim 0 is the row.
Feeds = dict[str, Array]


class ModelRuntime(Protocol):
    """One loaded model version, as the worker uses it.

    :meth:`run` is called off the event loop, from as many threads at once as
    the worker's ``max_model_threads``; everything else on the event loop.

    A runtime that takes request ``parameters`` declares their names in an
    ``accepts_parameters`` attribute (a set of strings; see
    :func:`accepted_parameters`). A request naming any other parameter is
    refused with :class:`~fleet.errors.InvalidArgument`, so a misspelt
    parameter is never silently ignored. A runtime without the attribute
    takes none.
    """

    @property
    def spec(self) -> ModelSpec:
        """The model version served, with its configuration."""
        ...

    @property
    def provider(self) -> str:
        """Where the model runs, as heartbeats report it (e.g. ``CPUExecutionProvider``)."""
        ...

    @property
    def max_batch_size(self) -> int:
        """The most rows one :meth:`run` takes."""
        ...

    def validate(self, inputs: Sequence[Tensor]) -> tuple[Feeds, int]:
        """A request's tensors checked against the signature: the arrays and the
        row count; :class:`~fleet.errors.InvalidArgument` when they do not fit."""
        ...

    def run(self, feeds: Mapping[str, Array]) -> Feeds:
        """Run one batch; every output has as many rows as the inputs."""
        ...

    def warm_up(self) -> Mapping[int, float]:
        """Run each batch size the runtime will see once; seconds taken per size."""
        ...

    def close(self) -> None:
        """Release the model; runs already under way finish."""
        ...


def accepted_parameters(runtime: object) -> frozenset[str]:
    """The names of the request parameters ``runtime`` takes (its
    ``accepts_parameters``; none when it declares nothing)."""
    names = getattr(runtime, "accepts_parameters", ())
    return frozenset(str(n) for n in names)


def check_parameters(runtime: ModelRuntime, parameters: Mapping[str, object]) -> None:
    """Refuse, naming them, the parameters ``runtime`` does not take."""
    if not parameters:  # most requests: nothing to check
        return
    accepted = accepted_parameters(runtime)
    # "fleet." names are the fleet's own (the cache's hash, a claim), read by the ingress
    unknown = sorted(k for k in set(parameters) - accepted if not k.startswith("fleet."))
    if unknown:
        spec = runtime.spec
        takes = ", ".join(sorted(accepted)) or "none"
        raise InvalidArgument(
            f"model {spec.name!r} version {spec.version!r} does not take the parameter"
            f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; it takes: {takes}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RuntimeSpec:
    """A runtime as the registry knows it: its name and how to load a model version."""

    name: str
    load: Callable[[ModelSpec], ModelRuntime]
    description: str = ""


#: Every model runtime: the ``fleet.runtimes`` entry points, plus :meth:`Registry.register`.
RUNTIMES: Registry[RuntimeSpec] = Registry("fleet.runtimes", "model runtime", RuntimeSpec)


def load_runtime(spec: ModelSpec) -> ModelRuntime:
    """Load ``spec`` with the runtime its configuration names.

    An unknown runtime is a :class:`~fleet.errors.ConfigError` naming the
    model's configuration file and the runtimes that are known.
    """
    try:
        runtime = RUNTIMES.get(spec.config.runtime)
    except ConfigError as exc:
        raise ConfigError(f"{spec.path.parent / CONFIG_FILE}: runtime: {exc.message}") from None
    return runtime.load(spec)


__all__ = [
    "RUNTIMES",
    "Array",
    "Feeds",
    "ModelRuntime",
    "RuntimeSpec",
    "accepted_parameters",
    "check_parameters",
    "load_runtime",
]
