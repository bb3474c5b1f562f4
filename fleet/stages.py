"""Where a request's time goes: the stages of its path and cheap histograms of them.

A request's path, and the stage names used in metrics, heartbeats and
:class:`fleet.contract.Stages`::

    client   coalesce        waiting in the client's lane for the next publish
             publish         the broker's publish confirm (overlaps what follows)
    broker   request_broker  from the publish to the worker's receipt
    worker   batch_wait      from receipt to the start of its batch's model run
             inference       the batch's model run alone (handing the batch to the
                             model's thread is batch_wait, handing it back reply)
             reply           from the end of the run to the reply handed to the broker
    broker   reply_broker    from the worker's publish to the client's receipt
    client   decode          decoding the reply message
             total           from the call to the answer

``request_broker + batch_wait + inference + reply + reply_broker`` is the time
from the publish to the reply's receipt, measured on the client's clock; how
it splits between the two broker legs is read from the two hosts' wall
clocks, so a clock skew moves time between the legs but never changes their
sum (each leg is clamped at zero).

:class:`Histogram` is for one event loop (no lock): an observation is one
``bisect`` and two additions, cheap enough for every request. Its
:meth:`Histogram.quantile` interpolates within buckets, as Prometheus'
``histogram_quantile`` does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

CLIENT_STAGES = (
    "coalesce",
    "publish",
    "request_broker",
    "batch_wait",
    "inference",
    "reply",
    "reply_broker",
    "decode",
    "total",
)
WORKER_STAGES = ("batch_wait", "inference", "reply")

BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds in seconds: fine below 10 ms, where everyday latency lives."""


class Histogram:
    """Counts of observations (seconds) per bucket, with their sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Count ``seconds`` (``times`` observations of it)."""
        self.counts[bisect_left(self.bounds, seconds)] += times
        self.count += times
        self.sum += seconds * times

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in seconds, interpolated within its bucket;
        0 when empty. Past the last bound, the last bound."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (self.bounds[i] - lower) * (rank - seen) / n
            seen += n
        return self.bounds[-1]

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, Prometheus style."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


def observe_each(
    hists: Sequence[Histogram], values: Sequence[float], indices: Iterable[int]
) -> None:
    """``hists[i].observe(values[i])`` for each ``i`` in ``indices``, inlined:
    a client makes eight of these per reply, and the calls were most of their cost."""
    for i in indices:
        hist, value = hists[i], values[i]
        hist.counts[bisect_left(hist.bounds, value)] += 1
        hist.count += 1
        hist.sum += value


class Histograms(Collector):
    """A Prometheus histogram with labels: one :class:`Histogram` per label
    values, which its caller keeps to observe with no lookup and no lock.

    Observations come from one event loop; ``collect`` (a scrape, from
    another thread) reads counts that may be mid-update by one observation,
    which Prometheus tolerates."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        bounds: Sequence[float] = BUCKETS,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(labels)
        self.bounds = tuple(float(b) for b in bounds)
        self._hists: dict[tuple[str, ...], Histogram] = {}

    def labels(self, *label_values: str) -> Histogram:
        """The histogram of these label values (made on first use)."""
        hist = self._hists.get(label_values)
        if hist is None:
            hist = self._hists[label_values] = Histogram(self.bounds)
        return hist

    def items(self) -> Iterator[tuple[tuple[str, ...], Histogram]]:
        return iter(list(self._hists.items()))

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = self._family()
        for key, hist in self.items():
            family.add_metric(list(key), hist.buckets(), hist.sum)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [self._family()]


class StageHistograms(Histograms):
    """:class:`Histograms` of the stages (:data:`CLIENT_STAGES`,
    :data:`WORKER_STAGES`): the label ``stage`` first, then ``labels``."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, ("stage", *labels))

    def histogram(self, stage: str, *label_values: str) -> Histogram:
        """The histogram of ``stage`` for these label values (made on first use;
        keep it to observe without a lookup)."""
        return self.labels(stage, *label_values)

    def observe(self, stage: str, seconds: float, *label_values: str) -> None:
        self.labels(stage, *label_values).observe(seconds)


class Counters(Collector):
    """A Prometheus counter with labels, each child a float in a dict: an
    increment is one addition, with no lock (one event loop increments;
    a scrape from another thread reads a copy)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, label_values: tuple[str, ...], amount: float = 1.0) -> None:
        self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = self._family()
        for key, value in list(self._values.items()):
            family.add_metric(list(key), value)
        yield family

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [self._family()]


__all__ = [
    "BUCKETS",
    "CLIENT_STAGES",
    "WORKER_STAGES",
    "Counters",
    "Histogram",
    "Histograms",
    "StageHistograms",
    "observe_each",
]
