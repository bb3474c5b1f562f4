"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.worker.fakes import DOUBLING, WIDE_DOUBLING, loaded
from worker.runtime import RUNTIMES, RuntimeSpec


@pytest.fixture
def doubling() -> Iterator[RuntimeSpec]:
    """The ``doubling`` runtime, registered for the test."""
    loaded.clear()
    with RUNTIMES.registered(DOUBLING) as spec:
        yield spec


@pytest.fixture
def wide_doubling() -> Iterator[RuntimeSpec]:
    """The ``wide-doubling`` runtime, registered for the test."""
    loaded.clear()
    with RUNTIMES.registered(WIDE_DOUBLING) as spec:
        yield spec
