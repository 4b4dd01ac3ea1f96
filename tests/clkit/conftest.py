"""Fixtures shared by the tests of clkit's loop, sweeps and tuning."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def sigint_restored() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after it handled a KeyboardInterrupt
