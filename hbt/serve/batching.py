"""Micro-batching: requests that arrive together go through one call, on worker threads off the event loop."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs ``process`` over batches of submitted items on ``workers`` threads, off the event loop.

    A batch starts as soon as a worker is free and takes the waiting items, up to
    ``max_size`` (items weigh ``size(item)``: a request of 3 queries counts 3): all of
    them while the other workers are busy, an even share of their weight when others
    are free too, so that no worker idles while one runs everything (closed-loop
    clients, each waiting for its answer, would otherwise keep one worker busy and the
    rest idle). While the workers are busy, new requests queue up and form the next
    batch, so batches grow with the load by themselves. A batch waits for more, at most ``max_wait``
    seconds after its first item arrived, only while requests have recently been
    arriving less than ``max_wait`` apart: a lone request never waits.

    ``process`` gets the items and returns one result per item; an exception in that
    list fails only its own item, an exception raised fails the whole batch.
    """

    def __init__(self, process: Callable[[list[Item]], list[Result | Exception]], max_size: int = 32,
                 max_wait: float = 0.002, size: Callable[[Item], int] = lambda item: 1, workers: int = 1):
        if max_size < 1 or max_wait < 0 or workers < 1:
            raise ValueError(f"max_size {max_size} and workers {workers} must be >= 1, max_wait {max_wait} >= 0")
        self.process, self.max_size, self.max_wait, self.size = process, max_size, max_wait, size
        self._pending: list[tuple[Item, asyncio.Future, float]] = []
        self._arrived = asyncio.Event()
        self._last_arrival = float("-inf")
        # Moving average of the time between arrivals, each gap counted up to 10 x max_wait:
        # one request after a pause lifts it above max_wait, a few quick ones bring it back.
        self._gap_cap = 10 * max_wait
        self._mean_gap = self._gap_cap
        self._worker: asyncio.Task | None = None
        self._free_workers = asyncio.Semaphore(workers)
        self._idle = workers  # workers not running a batch, this one included while it gathers
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hbt-batch")

    async def __aenter__(self) -> "MicroBatcher[Item, Result]":
        self._worker = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._worker.cancel()
        await asyncio.gather(self._worker, *self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, item: Item) -> tuple[Result, int, float]:
        """The item's result, the size of the batch it ran in, and the seconds it queued."""
        now = time.perf_counter()
        self._mean_gap = 0.8 * self._mean_gap + 0.2 * min(now - self._last_arrival, self._gap_cap)
        self._last_arrival = now
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, now))
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                await self._free_workers.acquire()
                await self._gather_more()
                share = -(-self._pending_size() // self._idle)  # ceiling: the workers free now split the load
                self._idle -= 1
                task = asyncio.create_task(self._process(self._take(min(self.max_size, share))))
                self._running.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._idle += 1
        self._free_workers.release()

    async def _process(self, batch: list[tuple[Item, asyncio.Future, float]]) -> None:
        size = sum(self.size(item) for item, _, _ in batch)
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.process, [item for item, _, _ in batch])
        except Exception as e:  # the whole batch failed: every request gets the error
            results = [e] * len(batch)
        for (_, future, arrived), result in zip(batch, results):
            if future.done():  # the client went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result((result, size, started - arrived))

    async def _gather_more(self) -> None:
        deadline = self._pending[0][2] + self.max_wait
        while self._mean_gap < self.max_wait and self._pending_size() < self.max_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _pending_size(self) -> int:
        return sum(self.size(item) for item, _, _ in self._pending)

    def _take(self, limit: int) -> list[tuple[Item, asyncio.Future, float]]:
        """The oldest items up to ``limit`` (always at least one, however large)."""
        taken, total = 0, 0
        for item, _, _ in self._pending:
            total += self.size(item)
            if taken and total > limit:
                break
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch
