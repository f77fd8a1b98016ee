"""torch's intra-op thread count lowered for a block of latency-bound work, and restored after it.

A parallel torch op on a CPU splits its work over an OpenMP team of threads and waits for every member at
its end. One query's encoding is a chain of small ops, so when another process holds a core, each op
waits for that core's next timeslice: on 2 cores with one kept busy, encoding a query took 500 ms with
torch's default 2 threads and 19 ms with 1 (``benchmarks/busy_latency.py``). :func:`torch_threads` runs
such a block with fewer threads.

How the count behaves in torch's OpenMP builds (the official wheels): ``torch.set_num_threads`` sets the
calling thread's count, and also a process-wide default that any thread copies when it first runs torch
work. So each block restores its own thread's count, and a thread that starts using torch while another
thread's block is open copies the lowered value. A thread entering its first block while another is open
(a server's worker threads encoding their first queries at once) is taken to have copied it, and restores
the count threads had before the first open block instead. A thread whose first torch work runs elsewhere
during a block keeps the lowered count: torch offers no way to tell it from a count its caller chose.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["torch_threads"]

_lock = threading.Lock()
_open = 0  # blocks, in any thread, that lowered the count and have not restored it yet
_before_open = 0  # the count the first of those blocks found: torch's default while they are open
_entered = threading.local()  # .seen: this thread has entered a block before


@contextmanager
def torch_threads(limit: int | None) -> Iterator[None]:
    """Run the block with at most ``limit`` torch threads in the calling thread, then restore its count
    (also when the block raises). ``None`` leaves torch alone, and so does a count already ``<= limit``."""
    if limit is None:
        yield
        return
    import torch

    global _open, _before_open
    with _lock:
        before = torch.get_num_threads()  # a thread's first call copies torch's process-wide default
        if _open and not getattr(_entered, "seen", False):
            before = max(before, _before_open)  # it may have copied another block's lowered default
        _entered.seen = True
        lowered = before > limit
        if lowered:
            if not _open:
                _before_open = before
            _open += 1
            torch.set_num_threads(limit)
    try:
        yield
    finally:
        if lowered:
            with _lock:
                _open -= 1
                torch.set_num_threads(before)
