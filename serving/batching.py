"""Dynamic micro-batching: concurrent requests to one model share an inference call.

Requests that queued up while the previous call ran go into the next call together
(up to ``max_batch_size`` images), so a lone request never waits; with
``max_delay > 0`` a batch also waits that long for more company. The call runs in an
executor thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


class MicroBatcher:
    """Collects ``(images, future)`` pairs and runs them through ``predict`` together."""

    def __init__(
        self,
        predict: Predict,
        executor: Executor,
        max_batch_size: int = 32,
        max_delay: float = 0.0,
        observe_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.predict = predict
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.observe_batch = observe_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for ``images`` ``[n, H, W, C]``, computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.max_delay
            while size < self.max_batch_size:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except TimeoutError:
                        break
                batch.append(item)
                size += len(item[0])
            await self._infer(loop, batch)

    async def _infer(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        images = np.concatenate([item[0] for item in batch]) if len(batch) > 1 else batch[0][0]
        self.observe_batch(len(images))
        try:
            outputs = await loop.run_in_executor(self.executor, self.predict, images)
        except Exception as error:  # a failed call fails its requests, not the batcher
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for item_images, future in batch:
            end = start + len(item_images)
            if not future.done():
                future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        while not self.queue.empty():
            await asyncio.sleep(0.001)
        self.task.cancel()
