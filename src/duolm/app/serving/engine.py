"""The batching engine behind `duolm serve`: requests wait in a bounded queue; one worker thread takes
the oldest, gathers every waiting request that can share its network calls, and samples them as one
batch in which each row holds its own prompt (duolm.sampling.generate.sample_prompted).

Requests share a batch when their sampler settings are equal (predictor, steps, last step, top_p, the
predictor's own options) and neither asks for a seed: a seeded request runs in a batch of its own
(its n rows), so the same seed gives the same completions whatever else is being served. A batch
holds at most `max_batch_rows` rows (a request's n rows are never split). A request cancelled while
waiting (its client gone, its time out) is dropped before its batch forms.

Whole batches, not continuous batching: a batch runs to its end, so a row that finishes early waits
for the batch's slowest row (block and AR models stop once every row has its EOS).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import torch

from duolm.sampling.generate import sample_prompted
from duolm.sampling.strategy import strategy_for


class QueueFull(Exception):
    """The queue holds its maximum of waiting requests."""


@dataclass
class Job:
    """One request: its prompt (ids, BOS first), n completions of at most max_tokens tokens."""

    prompt: list[int]
    n: int
    max_tokens: int
    spec: object                      # a checked SamplerSpec (its prefix unused)
    seed: int | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False

    @property
    def key(self):
        """Jobs with equal keys share a batch; a seeded job's key is its own."""
        return ("seed", id(self)) if self.seed is not None else ("spec", repr(self.spec))


class Engine:
    def __init__(self, method, backbone, tokenizer, length: int, *, max_batch_rows: int = 32, max_queue: int = 64,
                 batch_wait_s: float = 0.005, device=None, on_batch=None):
        self.method, self.backbone, self.tokenizer, self.length = method, backbone, tokenizer, length
        self.max_batch_rows, self.max_queue, self.batch_wait_s = max_batch_rows, max_queue, batch_wait_s
        self.device = device
        self.on_batch = on_batch          # on_batch(rows, seconds, new_tokens): metrics
        self._queue: deque[Job] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self.busy = False
        self._thread = threading.Thread(target=self._run, name="duolm-engine", daemon=True)

    # --- the server's side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the waiting and running requests, then end the worker."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout)

    def queue_length(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job; its future gets (n, length) ids. Raises QueueFull when the queue is full."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (serve.max_queue)")
            self._queue.append(job)
            self._lock.notify()
        return job.future

    # --- the worker -------------------------------------------------------------------------
    def _take_batch(self) -> list[Job]:
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            if not self._queue:
                return []
        if self.batch_wait_s:  # let requests sent together arrive together
            time.sleep(self.batch_wait_s)
        with self._lock:
            live = [j for j in self._queue if not j.cancelled]
            self._queue = deque(live)
            if not live:
                return []
            first = live[0]
            batch, rows = [], 0
            for j in live:
                if j.key == first.key and (not batch or rows + j.n <= self.max_batch_rows):
                    batch.append(j)
                    rows += j.n
                    if first.seed is not None:
                        break
            for j in batch:
                self._queue.remove(j)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                with self._lock:
                    if self._stopping and not self._queue:
                        return
                continue
            self.busy = True
            try:
                self._sample(batch)
            finally:
                self.busy = False

    def sampled_length(self, batch: list[Job]) -> int:
        """How many positions a batch samples: a whole-window model its window; AR and block models
        only as far as the batch's longest prompt + max_tokens (block models in whole blocks, past the
        model's length if asked)."""
        if strategy_for(self.method, self.length, None) == "window":
            return self.length
        need = max(len(j.prompt) + j.max_tokens for j in batch)
        if self.method.block_size:
            return -(-need // self.method.block_size) * self.method.block_size
        return min(self.length, need)

    def _sample(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        seed = batch[0].seed
        g = torch.Generator(device=self.device or "cpu")
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2 ** 62, (1,))))
        try:
            with torch.inference_mode():
                width = self.sampled_length(batch)
                spec = batch[0].spec
                if self.method.block_size:  # block by block to the batch's longest need, stopping at EOS
                    spec = replace(spec, total_length=width if width > self.length else None, stop_at_eos=True)
                ids = sample_prompted(self.method, self.backbone, [j.prompt for j in batch], [j.n for j in batch],
                                      min(width, self.length), spec, bos_id=self.tokenizer.bos_id,
                                      eos_id=self.tokenizer.eos_id, generator=g, device=self.device).cpu()
        except Exception as err:  # noqa: BLE001 - every waiting request learns of it
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        row = 0
        for j in batch:
            j.loop.call_soon_threadsafe(_settle, j.future, ids[row:row + j.n], None)
            row += j.n
        if self.on_batch is not None:
            self.on_batch(rows=row, seconds=time.perf_counter() - t0)


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():  # the request gave up (timeout, client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


__all__ = ["Engine", "Job", "QueueFull"]
