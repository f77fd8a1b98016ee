"""The batch runner: bounded concurrency, per-item failures kept in order, the sync face inside a running loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import partial

import pytest

from ragplug.errors import InvalidInputError
from ragplug.evaluators.runner import BatchRunner, ItemOutcome, arun_batch, is_async_callable, run_batch, run_sync


class Gauge:
    """Counts calls in flight (from threads or tasks) and remembers the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


async def test_async_fn_concurrency_bound_and_order() -> None:
    gauge = Gauge()

    async def slow_square(x: int) -> int:
        gauge.enter()
        await asyncio.sleep(0.01 * (x % 3))  # finish out of order
        gauge.leave()
        return x * x

    outcomes = await arun_batch(list(range(20)), slow_square, concurrency=3, progress=False)
    assert gauge.most == 3
    assert [o.value for o in outcomes] == [x * x for x in range(20)]
    assert [o.item_id for o in outcomes] == [str(x) for x in range(20)]
    assert all(o.ok and o.error is None and o.seconds >= 0 for o in outcomes)


async def test_sync_fn_runs_in_threads_within_the_bound() -> None:
    gauge = Gauge()
    loop_thread = threading.get_ident()
    threads = set()

    def blocking(x: int) -> int:
        gauge.enter()
        threads.add(threading.get_ident())
        time.sleep(0.02)
        gauge.leave()
        return -x

    outcomes = await arun_batch(list(range(12)), blocking, concurrency=4, progress=False)
    assert [o.value for o in outcomes] == [-x for x in range(12)]
    assert 2 <= gauge.most <= 4
    assert loop_thread not in threads  # the loop was never blocked


async def test_failures_are_kept_per_item_and_never_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def picky(item: dict) -> str:
        if item["id"] in ("b", "d"):
            raise ValueError(f"no {item['id']}")
        return item["id"].upper()

    items = [{"id": name} for name in "abcde"]
    with caplog.at_level(logging.WARNING, logger="ragplug.evaluators.runner"):
        outcomes = await arun_batch(items, picky, concurrency=2, progress=False, desc="picky")
    assert [o.item_id for o in outcomes] == list("abcde")
    assert [o.value for o in outcomes] == ["A", None, "C", None, "E"]
    assert [o.error for o in outcomes] == [None, "ValueError: no b", None, "ValueError: no d", None]
    assert not outcomes[1].ok
    assert "picky: 2 of 5 items failed: b, d" in caplog.text


async def test_ids_from_attribute_list_or_function() -> None:
    class Item:
        def __init__(self, item_id: str) -> None:
            self.item_id = item_id

    got = await arun_batch([Item("x"), Item("y")], lambda item: item.item_id, progress=False)
    assert [o.item_id for o in got] == ["x", "y"]
    got = await arun_batch([1, 2], str, ids=["one", "two"], progress=False)
    assert [(o.item_id, o.value) for o in got] == [("one", "1"), ("two", "2")]
    got = await arun_batch([1, 2], str, ids=lambda x: f"n{x}", progress=False)
    assert [o.item_id for o in got] == ["n1", "n2"]
    with pytest.raises(InvalidInputError, match="one id per item"):
        await arun_batch([1, 2], str, ids=["one"], progress=False)


async def test_sync_fn_returning_a_coroutine_is_awaited() -> None:
    async def double(x: int) -> int:
        return 2 * x

    outcomes = await arun_batch([1, 2, 3], lambda x: double(x), progress=False)
    assert [o.value for o in outcomes] == [2, 4, 6]


def test_run_batch_without_a_loop() -> None:
    outcomes = run_batch(["a", "bb", ""], len, progress=False)
    assert [o.value for o in outcomes] == [1, 2, 0]
    assert all(isinstance(o, ItemOutcome) for o in outcomes)


async def test_run_batch_inside_a_running_loop() -> None:
    """A sync caller inside async code (a Jupyter cell, an async app) gets its results: the batch runs on a
    fresh loop in another thread, while this loop stays as it was."""
    here = asyncio.get_running_loop()
    seen_loops = set()

    async def where(x: int) -> int:
        seen_loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return x + 1

    outcomes = run_batch(list(range(5)), where, concurrency=2, progress=False)
    assert [o.value for o in outcomes] == [1, 2, 3, 4, 5]
    assert id(here) not in seen_loops and len(seen_loops) == 1
    assert asyncio.get_running_loop() is here and not here.is_closed()
    # the sync face with a sync function works here too
    assert [o.value for o in run_batch([3, 4], str, progress=False)] == ["3", "4"]


async def test_run_sync_inside_a_running_loop_raises_the_error() -> None:
    async def boom() -> None:
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        run_sync(boom)
    assert run_sync(lambda: asyncio.sleep(0, result="done")) == "done"


def test_run_sync_outside_a_loop_takes_a_coroutine_or_a_factory() -> None:
    assert run_sync(asyncio.sleep(0, result=7)) == 7
    assert run_sync(lambda: asyncio.sleep(0, result=8), threads=2) == 8
    with pytest.raises(InvalidInputError, match="awaitable"):
        run_sync(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="threads"):
        run_sync(lambda: asyncio.sleep(0), threads=0)


def test_batch_runner_keeps_its_settings() -> None:
    runner = BatchRunner(concurrency=2, progress=False, desc="lengths")
    assert [o.value for o in runner.run(["ab", "c"], len)] == [2, 1]
    assert "concurrency=2" in repr(runner)
    with pytest.raises(InvalidInputError, match="concurrency"):
        BatchRunner(concurrency=0)


async def test_batch_runner_async() -> None:
    async def neg(x: int) -> int:
        return -x

    assert [o.value for o in await BatchRunner(progress=False).arun([1, 2], neg)] == [-1, -2]


@pytest.mark.parametrize(
    ("items", "fn", "concurrency", "match"),
    [
        ("abc", len, 2, "sequence"),
        ([1], 5, 2, "fn must be"),
        ([1], len, 0, "concurrency"),
        ([1], len, True, "concurrency"),
    ],
)
def test_bad_arguments(items: object, fn: object, concurrency: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        run_batch(items, fn, concurrency=concurrency)  # type: ignore[arg-type]


def test_progress_bar_counts_items(capsys: pytest.CaptureFixture[str]) -> None:
    run_batch(list(range(3)), str, progress=True, desc="counting")
    assert "counting" in capsys.readouterr().err


def test_is_async_callable() -> None:
    async def f(x: int) -> int:
        return x

    class Caller:
        async def __call__(self, x: int) -> int:
            return x

    assert is_async_callable(f) and is_async_callable(partial(f)) and is_async_callable(Caller())
    assert not is_async_callable(len) and not is_async_callable(lambda x: x)


async def test_empty_batch() -> None:
    assert await arun_batch([], str, progress=False) == []
