"""Progress for long work: when to show a bar, the bar itself, a one-line summary, and quiet model loads.

ragplug shows progress when the work is long enough for a user to wonder whether it is stuck: more than
:data:`PROGRESS_THRESHOLD` items, unless the caller forces it on or off (:func:`wants_progress`). Bars
count the items the user handed in (documents, not batches), show items/s, and estimate the time left
from the average rate since the start (``smoothing=0``), which is honest when the work is done in an
order whose running time is representative (see ``ColBERTEncoder.encode_documents``).

Nothing here imports torch or transformers at module level: ``import ragplug`` stays cheap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ragplug.errors import InvalidInputError

__all__ = [
    "LATE_BAR_SECONDS",
    "PROGRESS_THRESHOLD",
    "format_bytes",
    "progress_bar",
    "quiet_transformers",
    "summary",
    "wants_progress",
]

#: ``show_progress=None`` shows a bar for more than this many items, and stays silent below.
PROGRESS_THRESHOLD = 256

#: Work whose length is not known in advance (training a codec inside an ``add``) shows its bar only once
#: it has run this long: quick work stays silent, long work does not look stuck.
LATE_BAR_SECONDS = 2.0


def wants_progress(show_progress: bool | None, n_items: int) -> bool:
    """Whether to show a bar for ``n_items``: ``True``/``False`` force it; ``None`` means "when the work is
    long", more than :data:`PROGRESS_THRESHOLD` items."""
    if show_progress is None:
        return n_items > PROGRESS_THRESHOLD
    if not isinstance(show_progress, bool):
        msg = f"show_progress must be True, False or None (automatic), got {show_progress!r}"
        raise InvalidInputError(msg)
    return show_progress


def progress_bar(total: int, *, desc: str, unit: str = "item", enabled: bool = True, late: bool = False) -> Any:
    """A ``tqdm.auto`` bar over ``total`` items (advance it with ``bar.update(n)``; use it as a context
    manager). The rate is items/s and the time left is estimated from the average rate since the start;
    a disabled bar prints nothing, and a ``late`` one nothing before :data:`LATE_BAR_SECONDS`."""
    from tqdm.auto import tqdm

    delay = LATE_BAR_SECONDS if late else 0.0
    return tqdm(total=total, desc=desc, unit=unit, smoothing=0.0, dynamic_ncols=True, disable=not enabled, delay=delay)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def format_bytes(n: int | float) -> str:
    """Decimal units, as disks and downloads count: ``52.3 MB``."""
    value = float(n)
    unit = "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{int(value)} B" if unit == "B" else f"{value:,.1f} {unit}"


def summary(
    items: int, chunks: int, vectors: int, seconds: float, nbytes: int, *, verb: str = "indexed", noun: str = "item"
) -> str:
    """One line for the end of long work, e.g.
    ``indexed 1,200 items (3,400 chunks, 410,000 vectors, 52.3 MB) in 61.2 s (19.6 items/s)``."""
    line = (
        f"{verb} {_count(items, noun)} ({_count(chunks, 'chunk')}, {_count(vectors, 'vector')}, "
        f"{format_bytes(nbytes)}) in {seconds:,.1f} s"
    )
    if seconds > 0:
        line += f" ({items / seconds:,.1f} {noun}s/s)"
    return line


_quiet_lock = threading.RLock()


class _NoLoadReport(logging.Filter):
    """Drops transformers' "<Model> LOAD REPORT" table (missing / unexpected / mismatched weights)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_transformers(*, load_report: bool = True) -> Iterator[None]:
    """Load a model without transformers' per-load progress bars ("Loading weights"), then restore
    transformers' settings (also when the block raises). Model downloads (huggingface_hub's bars) and
    transformers' other warnings are left alone. Loads in other threads during the block are quiet too.

    ``load_report=False`` also drops transformers' load report table: only for a caller that loads with
    ``output_loading_info=True`` and judges the missing, unexpected and mismatched weights itself."""
    from transformers.utils import logging as hf_logging

    report_filter = _NoLoadReport()
    report_logger = logging.getLogger("transformers.modeling_utils")
    with _quiet_lock:
        set_hook = getattr(hf_logging, "set_tqdm_hook", None)
        was_enabled = hf_logging.is_progress_bar_enabled()
        if set_hook is not None:  # a hook replaces the bars and changes nothing else
            previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
        else:  # older transformers: the switch (it mutes huggingface_hub's bars too, until restored)
            hf_logging.disable_progress_bar()
        if not load_report:
            report_logger.addFilter(report_filter)
        try:
            yield
        finally:
            report_logger.removeFilter(report_filter)
            if set_hook is not None:
                set_hook(previous)
            elif was_enabled:
                hf_logging.enable_progress_bar()
