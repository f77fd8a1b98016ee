"""The scheduler: requests arriving together — from threads or from asyncio — are gathered by one thread
into batches (up to ``max_batch_size``, waiting ``batch_window_ms`` to fill one), grouped by sampling
setting, and handed to the model's batch server. Each request's future gets its own outcome; an error in
one batch never stops the thread.

The thread ends after ``idle_exit_s`` without requests and the next submit starts a new one: on a CPU an
idle thread that has run torch keeps its OpenMP team, which slows every other thread's torch work by ~25%
(measured on the benchmark model: a decoding step, or a query encoding; ``benchmarks/results/thread_teams.md``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

from ragplug.adapters.lora.config import LoadConfig
from ragplug.adapters.lora.requests import GenerationRequest, GenerationResult
from ragplug.errors import AdapterError

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)

ServeBatch = Callable[[Sequence[GenerationRequest]], list[GenerationResult | BaseException]]


class Scheduler:
    """Queues requests and serves them in batches through ``serve_batch`` on a thread of its own."""

    def __init__(self, serve_batch: ServeBatch, load: Callable[[], LoadConfig]) -> None:
        self.serve_batch = serve_batch
        self.load = load  # the model's LoadConfig as it is now (read at every batch)
        self.queue: queue.Queue[GenerationRequest | None] = queue.Queue()
        self.worker: threading.Thread | None = None
        self.worker_lock = threading.Lock()  # the scheduler thread's start and exit
        self.closed = False

    def put(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a checked request and make sure a thread serves it. Never blocks on a running batch."""
        with self.worker_lock:
            if self.closed:
                msg = "this model has been closed"
                raise AdapterError(msg)
            self.queue.put(request)
            if self.worker is None or not self.worker.is_alive():
                self.start_worker()
        return request.future

    def serve(self) -> None:
        """The scheduler thread's body; pending requests get a new thread if it ends unexpectedly."""
        try:
            self._serve_loop()
        finally:  # also after an unexpected error: pending requests get a new scheduler thread
            with self.worker_lock:
                if self.worker is threading.current_thread():
                    self.worker = None
                    if not self.closed and not self.queue.empty():
                        self.start_worker()

    def start_worker(self) -> None:  # with worker_lock held
        self.worker = threading.Thread(target=self.serve, name="ragplug-lora-scheduler", daemon=True)
        self.worker.start()

    def _serve_loop(self) -> None:
        while True:
            load = self.load()
            window, idle = load.batch_window_ms / 1000, load.idle_exit_s
            try:
                first = self.queue.get(timeout=idle)
            except queue.Empty:
                with self.worker_lock:
                    if self.queue.empty():  # a request put after this check finds no worker and starts one
                        self.worker = None
                        return
                continue
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + window
            while len(batch) < load.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self._serve_gathered(batch)

    def _serve_gathered(self, batch: list[GenerationRequest]) -> None:
        groups: dict[tuple[bool, float, float] | None, list[GenerationRequest]] = {}
        for request in batch:
            try:
                running = request.future.set_running_or_notify_cancel()
            except RuntimeError:  # the same request submitted twice, or its future settled by its caller
                logger.warning("skipping a request whose future is already running or done")
                continue
            if running:
                # a config that is no GenerationConfig (only past submit) fails in its own group, alone
                groups.setdefault(getattr(request.config, "sampling_key", None), []).append(request)
        for group in groups.values():
            try:
                outcomes = self.serve_batch(group)
            except BaseException as err:  # delivered to the callers; the scheduler keeps serving
                outcomes = [err] * len(group)
            for request, outcome in zip(group, outcomes, strict=True):
                with contextlib.suppress(InvalidStateError):  # a caller settled it meanwhile
                    if isinstance(outcome, BaseException):
                        request.future.set_exception(outcome)
                    else:
                        request.future.set_result(outcome)

    def close(self) -> None:
        """Stop the thread (pending requests are still served first)."""
        self.closed = True
        with self.worker_lock:
            worker = self.worker
            if worker is not None:
                self.queue.put(None)
        if worker is not None:
            worker.join(timeout=30)
