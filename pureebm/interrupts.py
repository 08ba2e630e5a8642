"""Cancellation points inside long chains, which also tell how far the chain is.

A chain calls ``checkpoint(images_done)`` at every step: its batch's images times
the share of its steps done. It does nothing unless the caller installed a check
with ``checking(check)``, which then runs at most once every ``interval`` seconds
with that count, and stops the chain by raising. The worker installs one that
raises when its job was canceled and reports the images in flight as partly done,
so a canceled job frees its worker within seconds, and a slow purifier shows a
rate within its first batch, however long one batch's chain is. No torch here,
and no job concepts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class Check:
    check: Callable[[float], None]  # given the batch's images done; raises to stop the chain
    interval: float
    last: float


CURRENT: ContextVar[Check | None] = ContextVar("pureebm_interrupt_check", default=None)


def checkpoint(images_done: float) -> None:
    """Run the installed check if ``interval`` seconds passed since it last ran."""
    current = CURRENT.get()
    if current is not None and time.monotonic() - current.last >= current.interval:
        current.last = time.monotonic()
        current.check(images_done)


@contextlib.contextmanager
def checking(check: Callable[[float], None], interval: float = 1.0) -> Iterator[None]:
    """Run ``check`` at the chains' checkpoints inside this block (in this thread)."""
    token = CURRENT.set(Check(check, interval, time.monotonic()))
    try:
        yield
    finally:
        CURRENT.reset(token)
