"""Fixtures of the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.worker.fakes import DOUBLING, loaded
from worker.runtime import RUNTIMES, RuntimeSpec


@pytest.fixture
def doubling() -> Iterator[RuntimeSpec]:
    """The ``doubling`` runtime, registered for the test."""
    loaded.clear()
    with RUNTIMES.registered(DOUBLING) as spec:
        yield spec
