"""Apply a function to many items with bounded concurrency, and keep what happened to each one.

Evaluations call slow things (an LLM judge, a retriever, a RAG chain) once per item. :func:`arun_batch` runs
``fn`` over the items with at most ``concurrency`` calls in flight (an :class:`asyncio.Semaphore`), shows a
tqdm bar, and returns one :class:`ItemOutcome` per item, in the items' order: the value, or the error as
text. An item that fails never stops the others and is never dropped; the failures are also summed up in
one logged warning.

``fn`` may be a coroutine function (awaited on the loop) or a plain function (run in a worker thread, so a
blocking model call does not stall the loop). :func:`run_batch` is the synchronous face: it works in a
script, and also when called from code that already runs an event loop (a Jupyter cell, an async server),
where it runs the batch on a fresh event loop in a worker thread and waits for it. It never calls
``run_until_complete`` on a running loop and never patches asyncio (nest_asyncio).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ragplug._checks import integer_at_least
from ragplug._progress import progress_bar, wants_progress
from ragplug.errors import InvalidInputError

__all__ = ["BatchRunner", "ItemOutcome", "arun_batch", "run_batch", "run_sync"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")

#: Longest error text kept per item (a model's error can quote a whole prompt).
ERROR_CHARS = 2000


@dataclass(frozen=True)
class ItemOutcome(Generic[T]):
    """What happened to one item: ``value`` when ``fn`` returned (None only if it returned None), else
    ``error`` (``"ExceptionType: message"``); ``seconds`` is the wall time of its call."""

    item_id: str
    value: T | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the call returned (``error`` is None)."""
        return self.error is None


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def`` function, a partial of one, or an object
    whose ``__call__`` is ``async def``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (the class's own __call__, not callable())
    return call is not None and inspect.iscoroutinefunction(call)


def _item_id(item: Any, index: int) -> str:
    found = getattr(item, "item_id", None)
    if found is None and isinstance(item, Mapping):
        found = item.get("item_id", item.get("id"))
    return str(found) if found is not None else str(index)


def _ids(items: Sequence[Any], ids: Sequence[str] | Callable[[Any], str] | None) -> list[str]:
    if ids is None:
        return [_item_id(item, i) for i, item in enumerate(items)]
    if callable(ids):
        return [str(ids(item)) for item in items]
    if isinstance(ids, str) or len(ids) != len(items):
        msg = f"ids must be one id per item ({len(items)} items) or a function of an item, got {ids!r}"[:300]
        raise InvalidInputError(msg)
    return [str(i) for i in ids]


def _check(items: Any, fn: Any, concurrency: Any) -> None:
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        msg = f"items must be a sequence (list, tuple), got {type(items).__name__}"
        raise InvalidInputError(msg)
    if not callable(fn):
        msg = f"fn must be a function of one item (sync or async), got {fn!r}"
        raise InvalidInputError(msg)
    integer_at_least(concurrency, "concurrency")


async def _call(fn: Callable[[Any], Any], item: Any, asynchronous: bool, executor: ThreadPoolExecutor | None) -> Any:
    if asynchronous:
        return await fn(item)
    value = await asyncio.get_running_loop().run_in_executor(executor, fn, item)
    if inspect.isawaitable(value):  # a plain function that hands back a coroutine (a lambda around one)
        value = await value
    return value


def _report(outcomes: Sequence[ItemOutcome[Any]], desc: str) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return
    shown = ", ".join(o.item_id for o in failed[:20]) + (f" and {len(failed) - 20} more" if len(failed) > 20 else "")
    logger.warning(
        "%s: %d of %d items failed: %s (first error, item %s: %s)",
        desc,
        len(failed),
        len(outcomes),
        shown,
        failed[0].item_id,
        failed[0].error,
    )


async def arun_batch(
    items: Sequence[ItemT],
    fn: Callable[[ItemT], Awaitable[T]] | Callable[[ItemT], T],
    *,
    concurrency: int = 8,
    progress: bool | None = True,
    desc: str = "items",
    ids: Sequence[str] | Callable[[ItemT], str] | None = None,
) -> list[ItemOutcome[T]]:
    """``fn(item)`` for every item, at most ``concurrency`` at once; one :class:`ItemOutcome` per item, in
    order. A coroutine function is awaited; a plain function runs in a thread pool of ``concurrency``
    threads. An exception (any :class:`Exception`) is caught and kept as the item's ``error``; cancelling
    the batch cancels the calls in flight and is raised.

    ``progress``: True / False force the bar, None shows it for long batches; ``desc`` labels it and the
    warning that lists failed items. ``ids`` names the items (one id each, or a function of an item); by
    default an item's ``item_id`` attribute, its ``"item_id"`` or ``"id"`` key, else its position.

    An async ``fn`` that hands blocking work to ``asyncio.to_thread`` (as the LLM judges do with a sync chat
    function) shares the running loop's default thread pool, ``min(32, cores + 4)`` threads unless the caller
    set another; :func:`run_batch` runs on its own loop with a pool sized to ``concurrency``."""
    _check(items, fn, concurrency)
    names = _ids(items, ids)
    asynchronous = is_async_callable(fn)
    semaphore = asyncio.Semaphore(concurrency)
    executor = None if asynchronous else ThreadPoolExecutor(concurrency, thread_name_prefix="ragplug-batch")
    enabled = wants_progress(progress, len(items))

    try:
        with progress_bar(len(items), desc=desc, unit="item", enabled=enabled) as bar:

            async def one(item: ItemT, name: str) -> ItemOutcome[T]:
                async with semaphore:
                    start = time.perf_counter()
                    try:
                        value = await _call(fn, item, asynchronous, executor)
                    except Exception as err:  # kept as the item's outcome; the others go on
                        error = f"{type(err).__name__}: {err}"[:ERROR_CHARS]
                        outcome: ItemOutcome[T] = ItemOutcome(name, None, error, time.perf_counter() - start)
                    else:
                        outcome = ItemOutcome(name, value, None, time.perf_counter() - start)
                bar.update(1)
                return outcome

            outcomes = list(await asyncio.gather(*(one(item, name) for item, name in zip(items, names, strict=True))))
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    _report(outcomes, desc)
    return outcomes


def _run_here(awaitable: Awaitable[T], threads: int | None) -> T:
    # A fresh loop owned by this call (no loop runs in this thread): run_until_complete on it is safe.
    loop = asyncio.new_event_loop()
    if threads is not None:  # asyncio.to_thread's pool; the default has min(32, cores + 4) threads
        loop.set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix="ragplug-to-thread"))
    try:
        return loop.run_until_complete(awaitable)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def run_sync(awaitable: Awaitable[T] | Callable[[], Awaitable[T]], *, threads: int | None = None) -> T:
    """Wait for ``awaitable`` from synchronous code and return its result (or raise its exception).

    With no event loop running in this thread it runs on a fresh loop here; inside a running loop (a
    Jupyter cell, an async server calling sync code) it runs on a fresh loop in a new thread, and this thread
    blocks until it ends. Pass a coroutine function of no arguments (``lambda: coro(...)``) to create the
    coroutine inside the loop that runs it. ``threads`` sizes the fresh loop's default thread pool (what
    ``asyncio.to_thread`` uses); None keeps asyncio's default."""
    if not callable(awaitable) and not inspect.isawaitable(awaitable):
        msg = f"run_sync needs an awaitable or a function returning one, got {awaitable!r}"
        raise InvalidInputError(msg)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        msg = f"threads must be an integer >= 1 or None, got {threads!r}"
        raise InvalidInputError(msg)

    async def main() -> T:
        target = awaitable() if callable(awaitable) else awaitable
        return await target

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(main(), threads)
    box: dict[str, Any] = {}

    def worker() -> None:
        try:
            box["value"] = _run_here(main(), threads)
        except BaseException as err:  # handed to the waiting thread
            box["error"] = err

    thread = threading.Thread(target=worker, name="ragplug-run-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_batch(
    items: Sequence[ItemT],
    fn: Callable[[ItemT], Awaitable[T]] | Callable[[ItemT], T],
    *,
    concurrency: int = 8,
    progress: bool | None = True,
    desc: str = "items",
    ids: Sequence[str] | Callable[[ItemT], str] | None = None,
) -> list[ItemOutcome[T]]:
    """The synchronous :func:`arun_batch` (same arguments, same result), usable inside a running event loop
    too (see :func:`run_sync`). The batch runs on a fresh event loop whose ``asyncio.to_thread`` pool has
    ``2 * concurrency`` threads, so an async ``fn`` that hands blocking work to threads is not capped by
    asyncio's default pool size."""
    _check(items, fn, concurrency)
    # The loop is ours: its to_thread pool gets room for every call in flight, twice over (an async fn such
    # as a pairwise judge may hand two blocking calls per item to asyncio.to_thread at once).
    return run_sync(
        lambda: arun_batch(items, fn, concurrency=concurrency, progress=progress, desc=desc, ids=ids),
        threads=max(2 * concurrency, 4),
    )


class BatchRunner:
    """:func:`run_batch` / :func:`arun_batch` with their settings kept: ``runner.run(items, fn)``."""

    def __init__(self, *, concurrency: int = 8, progress: bool | None = True, desc: str = "items") -> None:
        _check((), len, concurrency)
        wants_progress(progress, 0)  # checks the value
        self.concurrency = concurrency
        self.progress = progress
        self.desc = desc

    def __repr__(self) -> str:
        return f"BatchRunner(concurrency={self.concurrency}, progress={self.progress!r}, desc={self.desc!r})"

    def run(
        self,
        items: Sequence[ItemT],
        fn: Callable[[ItemT], Awaitable[T]] | Callable[[ItemT], T],
        *,
        ids: Sequence[str] | Callable[[ItemT], str] | None = None,
    ) -> list[ItemOutcome[T]]:
        return run_batch(items, fn, concurrency=self.concurrency, progress=self.progress, desc=self.desc, ids=ids)

    async def arun(
        self,
        items: Sequence[ItemT],
        fn: Callable[[ItemT], Awaitable[T]] | Callable[[ItemT], T],
        *,
        ids: Sequence[str] | Callable[[ItemT], str] | None = None,
    ) -> list[ItemOutcome[T]]:
        return await arun_batch(
            items, fn, concurrency=self.concurrency, progress=self.progress, desc=self.desc, ids=ids
        )
