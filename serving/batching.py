"""Dynamic batching on a model version's own inference lane.

Each loaded model version has one :class:`MicroBatcher`: a bounded queue and one
inference thread of its own, so a big request to one model never holds up another.
Requests that queued up while the previous call ran go into the next call together, up
to ``max_batch_size`` items (a larger request is split into several calls), so a lone
request never waits; with ``max_delay > 0`` a batch also waits that long for company.
A full queue (``max_queue`` items, or ``max_queue_bytes`` of inputs behind other
requests) answers 503 at once; queued work whose request was cancelled is dropped, not
computed. Closing a batcher (its version was unloaded, or the server stops) refuses new
requests with 503 and finishes the queued ones.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.errors import PayloadTooLarge, ServiceUnavailable

log = logging.getLogger("cfconv.serve")
Arrays = dict[str, np.ndarray]
Predict = Callable[[Arrays], Arrays]


@dataclasses.dataclass
class Statistics:
    """What Triton's inference statistics report, per model version (times in ns)."""

    inference_count: int = 0  # items inferred
    execution_count: int = 0  # inference calls
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0  # items that left the queue for a call
    queue_ns: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0


@dataclasses.dataclass
class _Item:
    inputs: Arrays
    size: int
    enqueued: float
    future: asyncio.Future

    @property
    def nbytes(self) -> int:
        return _nbytes(self.inputs)

    def fits_with(self, other: _Item) -> bool:
        """Whether the two can share a call (same per-item shapes for every input)."""
        return all(
            self.inputs[name].shape[1:] == other.inputs[name].shape[1:] for name in self.inputs
        )


def _batch_size(inputs: Arrays) -> int:
    return len(next(iter(inputs.values())))


def _nbytes(inputs: Arrays) -> int:
    return sum(value.nbytes for value in inputs.values())


class MicroBatcher:
    """Batches ``predict`` calls for one model version on its own thread."""

    def __init__(
        self,
        predict: Predict,
        lane_name: str,
        max_batch_size: int = 32,
        max_delay: float = 0.0,
        max_queue: int = 512,
        max_queue_bytes: int = 2**30,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.observe_batch = observe_batch
        self.statistics = Statistics()
        self.lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix=lane_name)
        self.queue: collections.deque[_Item] = collections.deque()
        self.queued = 0  # items waiting
        self.queued_bytes = 0  # and their inputs' bytes
        self.closed = False
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.task.add_done_callback(self._report_end)

    async def submit(self, inputs: Arrays) -> Arrays:
        """Outputs for ``inputs`` (each ``[n, ...]``), computed in one or more batches.

        Raises:
            ServiceUnavailable: the batcher is closed, or its queue is full (retry).
            PayloadTooLarge: the request alone is larger than the queue.
        """
        size = _batch_size(inputs)
        if self.closed:
            raise ServiceUnavailable("this model version was just unloaded; send the request again")
        if size > self.max_queue:
            raise PayloadTooLarge(
                f"a request of {size} items exceeds the queue of {self.max_queue} items per model"
            )
        nbytes = _nbytes(inputs)
        if self.queued + size > self.max_queue or (
            self.queued and self.queued_bytes + nbytes > self.max_queue_bytes
        ):  # the byte bound stops a pile-up; a request alone may exceed it
            raise ServiceUnavailable(f"the model's queue is full ({self.queued} items waiting)")
        loop = asyncio.get_running_loop()
        start = time.perf_counter_ns()
        chunks = []
        for begin in range(0, size, self.max_batch_size):
            chunk = {
                name: value[begin : begin + self.max_batch_size] for name, value in inputs.items()
            }
            item = _Item(chunk, _batch_size(chunk), time.perf_counter_ns(), loop.create_future())
            self.queue.append(item)
            chunks.append(item.future)
        self.queued += size
        self.queued_bytes += nbytes
        self.wake.set()
        try:
            results = await asyncio.gather(*chunks)
        except Exception:
            self._count(failed=True, since=start)
            raise
        self._count(failed=False, since=start)
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([part[name] for part in results]) for name in results[0]}

    def _count(self, failed: bool, since: int) -> None:
        elapsed = time.perf_counter_ns() - since
        if failed:
            self.statistics.fail_count += 1
            self.statistics.fail_ns += elapsed
        else:
            self.statistics.success_count += 1
            self.statistics.success_ns += elapsed

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                if self.closed:
                    return
                self.wake.clear()
                await self.wake.wait()
            batch = await self._collect(loop)
            if batch:
                await self._infer(loop, batch)

    def _pop(self) -> _Item:
        item = self.queue.popleft()
        self.queued -= item.size
        self.queued_bytes -= item.nbytes
        return item

    def _next(self) -> _Item | None:
        """The first queued item whose request still waits (others are dropped)."""
        while self.queue:
            item = self._pop()
            if not item.future.done():  # cancelled: its client or the server gave up
                return item
        return None

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Take the first waiting item and whatever fits with it, waiting up to
        ``max_delay``."""
        first = self._next()
        if first is None:
            return []
        batch = [first]
        size = first.size
        deadline = loop.time() + self.max_delay
        while size < self.max_batch_size:
            if self.queue:
                following = self.queue[0]
                if following.future.done():  # cancelled: dropped, the next one is checked
                    self._pop()
                    continue
                if size + following.size > self.max_batch_size or not following.fits_with(first):
                    break
                batch.append(self._pop())
                size += following.size
                continue
            timeout = deadline - loop.time()
            if timeout <= 0 or self.closed:
                break
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                break
        return batch

    async def _infer(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        """One call for ``batch``; whatever fails fails its requests, never the lane."""
        try:
            results = await self._call(loop, batch)
        except Exception as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> list[Arrays]:
        names = list(batch[0].inputs)
        inputs = (
            batch[0].inputs
            if len(batch) == 1
            else {name: np.concatenate([item.inputs[name] for item in batch]) for name in names}
        )
        total = sum(item.size for item in batch)
        self.observe_batch(total)
        started = time.perf_counter_ns()
        stats = self.statistics
        stats.queue_count += len(batch)
        stats.queue_ns += sum(started - item.enqueued for item in batch)
        try:
            outputs = await loop.run_in_executor(self.lane, self.predict, inputs)
        finally:
            stats.compute_ns += time.perf_counter_ns() - started
        if any(np.ndim(value) == 0 or len(value) != total for value in outputs.values()):
            raise RuntimeError(f"the model answered {total} items with other batch sizes")
        stats.inference_count += total
        stats.execution_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000
        results, begin = [], 0
        for item in batch:
            end = begin + item.size
            results.append({name: value[begin:end] for name, value in outputs.items()})
            begin = end
        return results

    def _report_end(self, task: asyncio.Task) -> None:
        """A lane that stops by itself fails what waits on it (and says so) instead of
        leaving it waiting."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("inference lane stopped: %r", task.exception())
        self.closed = True
        for item in self.queue:
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable("the model's lane stopped"))
        self.queue.clear()

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the lane."""
        self.closed = True
        self.wake.set()
        await asyncio.gather(self.task, return_exceptions=True)  # a dead lane said why
        self.lane.shutdown(wait=False)
