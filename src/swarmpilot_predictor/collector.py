"""Python's cyclic garbage collector, paused while large answers are made or read.

A batch of 10,000 tasks makes some 100,000 dicts and lists (its parsed traces, its results,
their JSON): each time the allocations pass the collector's threshold it walks every one of
them, and a batch's cost grew faster than its size (100,000 traces over HTTP: about 800 ms,
and 560 with the collector paused; benchmarks/README.md, "Hot path"). They hold no reference
cycles, so pausing frees nothing late.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_on = False


@contextmanager
def collector_paused(pause: bool = True) -> Iterator[None]:
    """The collector off while the block runs (if ``pause``), and back as it was once the
    last of the blocks paused at the same time (in any thread) ends: one block's end does not
    turn it on under another still running."""
    global _holders, _was_on
    if not pause:
        yield
        return
    with _lock:
        if _holders == 0:
            _was_on = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_on:
                gc.enable()
