"""A module-wide time limit for tests that start real processes.

A hung federation (a process waiting on a socket that will never answer)
must fail the module with a clear message, not stall CI until its own
limit. SIGALRM interrupts the test's main thread wherever it waits.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest


class Watchdog(Exception):
    pass


def module_watchdog(seconds: int, what: str) -> Callable[[], Iterator[None]]:
    """An autouse, module-scoped fixture that raises ``Watchdog`` after ``seconds``."""

    @pytest.fixture(scope="module", autouse=True)
    def watchdog() -> Iterator[None]:
        def fire(signum: int, frame: FrameType | None) -> None:
            raise Watchdog(f"{what} took more than {seconds} s")

        previous = signal.signal(signal.SIGALRM, fire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return watchdog
