"""Query encoding runs with ``query_threads`` torch threads and gives the caller's count back, whatever happens."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ragplug._threads import torch_threads
from ragplug.errors import InvalidInputError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.colbert.encoder import SMALL_QUERY_BATCH

TEAM = 4  # the caller's count in these tests: above 1 and above the limits used, on any machine


@pytest.fixture
def team() -> Iterator[int]:
    """The calling thread, and any thread started meanwhile, at ``TEAM`` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(TEAM)
    yield TEAM
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def encoder(stanford_checkpoint: Path) -> ColBERTEncoder:
    return ColBERTEncoder(stanford_checkpoint, device="cpu")


@pytest.fixture
def forward_threads(encoder: ColBERTEncoder) -> Iterator[list[int]]:
    """The torch thread count each forward pass of ``encoder`` ran with, in call order."""
    seen: list[int] = []
    handle = encoder.model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    yield seen
    handle.remove()


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a new thread; its result, or its exception raised here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as err:
            out["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_query_encoded_with_query_threads_then_count_restored(
    encoder: ColBERTEncoder, team: int, forward_threads: list[int]
) -> None:
    encoder.encode_queries(["marley was dead", "tiny tim"])
    assert forward_threads == [1]
    assert torch.get_num_threads() == team
    assert in_thread(torch.get_num_threads) == team  # torch's default for new threads is back too


def test_documents_and_large_query_batches_keep_the_callers_count(
    encoder: ColBERTEncoder, team: int, forward_threads: list[int]
) -> None:
    encoder.encode_documents(["scrooge, the miser!", "bah, humbug"])
    encoder.encode_queries([f"ghost number {i}" for i in range(SMALL_QUERY_BATCH + 1)])
    assert forward_threads == [team, team]


def test_count_restored_when_encoding_raises(encoder: ColBERTEncoder, team: int) -> None:
    def fail(module: Any, args: Any) -> None:
        raise RuntimeError("out of memory, say")

    handle = encoder.model.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            encoder.encode_queries(["marley was dead"])
    finally:
        handle.remove()
    assert torch.get_num_threads() == team
    assert in_thread(torch.get_num_threads) == team


def test_none_leaves_torch_alone(stanford_checkpoint: Path, team: int, monkeypatch: pytest.MonkeyPatch) -> None:
    untouched = ColBERTEncoder(stanford_checkpoint, device="cpu", query_threads=None)
    seen: list[int] = []
    untouched.model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    untouched.encode_queries(["marley was dead"])
    assert (seen, calls) == ([team], [])


def test_query_threads_can_be_changed_on_the_instance(
    encoder: ColBERTEncoder, team: int, forward_threads: list[int]
) -> None:
    encoder.query_threads = 2
    try:
        encoder.encode_queries(["marley was dead"])
    finally:
        encoder.query_threads = 1
    assert forward_threads == [2]
    assert torch.get_num_threads() == team


def test_a_lower_count_is_kept(encoder: ColBERTEncoder, team: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    encoder.encode_queries(["marley was dead"])
    assert calls == []


def test_concurrent_query_encodings(encoder: ColBERTEncoder, team: int, forward_threads: list[int]) -> None:
    """Worker threads encoding at once, each starting to use torch inside the others' blocks: every forward
    pass runs with 1 thread, and every thread, old or new, is left with the caller's count."""
    n_threads, rounds = 6, 10
    start = threading.Barrier(n_threads)
    after: list[int] = []

    def work() -> None:
        start.wait()
        for i in range(rounds):
            encoder.encode_queries([f"the ghost of christmas {i}"])
        after.append(torch.get_num_threads())

    workers = [threading.Thread(target=work) for _ in range(n_threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert forward_threads == [1] * (n_threads * rounds)
    assert after == [team] * n_threads
    assert torch.get_num_threads() == team
    assert in_thread(torch.get_num_threads) == team


def test_a_thread_starting_torch_inside_another_block_gets_the_default_back(team: int) -> None:
    """Deterministic form of the race above: thread B makes its first torch call while A's block is open."""
    opened, b_done = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a() -> None:
        with torch_threads(1):
            opened.set()
            b_done.wait(timeout=30)
        seen["a after"] = torch.get_num_threads()

    def b() -> None:
        opened.wait(timeout=30)
        with torch_threads(1):
            seen["b inside"] = torch.get_num_threads()
        seen["b after"] = torch.get_num_threads()
        b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"b inside": 1, "b after": team, "a after": team}
    assert in_thread(torch.get_num_threads) == team


def test_nested_blocks_restore_in_order(team: int) -> None:
    with torch_threads(2):
        assert torch.get_num_threads() == 2
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads(3):  # never raises the count
            assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == team


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_query_threads(stanford_checkpoint: Path, bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="query_threads"):
        ColBERTEncoder(stanford_checkpoint, device="cpu", query_threads=bad)
