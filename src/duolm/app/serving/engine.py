"""The batching engine behind `duolm serve`: requests wait in a bounded queue; one worker thread runs
them in batches in which each row holds its own prompt.

Continuous batching (block diffusion and AR models on a backbone with `Capabilities.ragged_rows`:
the DiT, model=hf without sliding windows): one running batch (duolm.sampling.continuous.ContinuousBatch) takes a block (AR: a
token) per step for every row; a row leaves as soon as it is done (its EOS, max_tokens, a stop
string, its client gone or its time out) and waiting requests join at the next step, so no row
waits for the batch's slowest. Each step's new tokens go to a streaming request at once.

Whole batches (whole-window models, DiffusionGemma, backbones without ragged rows, and seeded
requests whose sampler cannot give each row its own stream): the worker takes the oldest request and every waiting one that can share
its calls, samples them to the end (duolm.sampling.generate.sample_prompted) and answers them
together; a batch whose requests have all given up stops at its next denoising step.

Which requests share calls: equal sampler settings (predictor, steps, last step, top_p, temperature,
the predictor's own options). A seeded request shares a continuous batch when its sampler's rows
draw from their own streams (duolm.sampling.registry.draws_by_row: ancestral, ancestral_cache, psi,
confidence on masked models, ar): row r of a request with seed s draws from row_generator(s, r), so
the same seed gives the same completions whatever else is in the batch. Otherwise (whole batches,
the other samplers) a seeded request runs in a batch of its own (its n rows). A batch holds at most
`max_batch_rows` rows (a request's n rows are never split). Requests are served in arrival order:
while the oldest waiting request cannot join the running batch, nothing else joins it either.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import torch

from duolm.sampling.continuous import ContinuousBatch
from duolm.sampling.generate import sample_prompted
from duolm.sampling.observers import Observer
from duolm.sampling.registry import draws_by_row
from duolm.sampling.strategy import strategy_for


class QueueFull(Exception):
    """The queue holds its maximum of waiting requests."""


class Abandoned(Exception):
    """Every request of a batch gave up while it was sampled."""


@dataclass
class Job:
    """One request: its prompt (ids, BOS first), n completions of at most max_tokens tokens.

    Its future gets a list of n rows of ids (each the prompt and what was generated). stream: a
    function called on the server's event loop with (row, new token ids, done) as each step makes
    them (continuous batching only). drafts: one called with (row, step, ids after the prompt) at
    every denoising step of a whole batch (stream_drafts). stop: strings that end a row (checked on
    its decoded text)."""

    prompt: list[int]
    n: int
    max_tokens: int
    spec: object                      # a checked SamplerSpec (its prefix unused)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: object = None
    drafts: object = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False

    def tell(self, row: int, tokens: list[int], done: bool) -> None:
        if self.stream is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.stream, row, tokens, done)


class _Watch(Observer):
    """Sees every step of a whole batch: stops it once every one of its requests has given up, and
    hands each step's draft to the requests that stream drafts."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.first_row = [sum(j.n for j in jobs[:k]) for k in range(len(jobs))]
        self.calls = 0

    def report(self, **counts) -> None:
        self.calls += counts.get("denoiser_calls", 0) + counts.get("commit_calls", 0)

    def step(self, i: int, x: torch.Tensor) -> None:
        if all(j.cancelled for j in self.jobs):
            raise Abandoned
        for j, row in zip(self.jobs, self.first_row):
            if j.drafts is not None and not j.cancelled:
                part = x[row:row + j.n, len(j.prompt):len(j.prompt) + j.max_tokens].tolist()
                for r, ids in enumerate(part):
                    j.loop.call_soon_threadsafe(j.drafts, r, i, ids)


class Engine:
    def __init__(self, method, backbone, tokenizer, length: int, *, max_batch_rows: int = 32, max_queue: int = 64,
                 batch_wait_s: float = 0.005, device=None, on_batch=None, continuous: bool = True):
        self.method, self.backbone, self.tokenizer, self.length = method, backbone, tokenizer, length
        self.max_batch_rows, self.max_queue, self.batch_wait_s = max_batch_rows, max_queue, batch_wait_s
        self.device = device
        self.on_batch = on_batch          # on_batch(rows, seconds, calls): metrics, per step or whole batch
        # block by block (token by token) with rows joining and leaving, where the backbone allows it
        self.continuous = continuous and bool(backbone.capabilities.ragged_rows) and \
            strategy_for(method, length, None) in ("blocks", "autoregressive")
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

    def shares_rows(self, job: Job) -> bool:
        """Whether a job runs continuously with each row drawing from its own stream (a seeded job too)."""
        return self.continuous and draws_by_row(job.spec.predictor, self.method)

    def runs_continuously(self, job: Job) -> bool:
        """Whether a job goes into the running batch (block by block, token by token) or a whole batch."""
        return self.continuous and (job.seed is None or self.shares_rows(job))

    def key(self, job: Job):
        """Jobs with equal keys share a batch; a seeded job's key is its own unless its rows draw from
        their own streams (continuous batching with a row_streams sampler)."""
        if job.seed is not None and not self.shares_rows(job):
            return ("seed", id(job))
        return ("spec", repr(job.spec))

    def queue_length(self) -> int:
        """Requests waiting (one given up while waiting no longer counts)."""
        return sum(not j.cancelled for j in list(self._queue))

    def submit(self, job: Job) -> asyncio.Future:
        """Queue a job; its future gets its n rows of ids. Raises QueueFull when the queue is full."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            self._queue = deque(j for j in self._queue if not j.cancelled)
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (serve.max_queue)")
            self._queue.append(job)
            self._lock.notify()
        return job.future

    # --- the worker -------------------------------------------------------------------------
    def _wait_for_work(self) -> bool:
        """Block until a request waits (True) or the server stops with none (False)."""
        with self._lock:
            while not self._queue and not self._stopping:
                self._lock.wait()
            return bool(self._queue)

    def _take(self, key=None, room: int | None = None) -> list[Job]:
        """The oldest live requests that share a batch: with `key`, only while the oldest has it (arrival
        order), within `room` rows."""
        room = self.max_batch_rows if room is None else room
        with self._lock:
            self._queue = deque(j for j in self._queue if not j.cancelled)
            if not self._queue:
                return []
            first = key if key is not None else self.key(self._queue[0])
            taken, rows = [], 0
            for j in self._queue:
                if self.key(j) != first or (taken and rows + j.n > room) or \
                        (not taken and key is not None and j.n > room):
                    break
                taken.append(j)
                rows += j.n
                if first[0] == "seed":  # a seeded job alone
                    break
            for j in taken:
                self._queue.remove(j)
            return taken

    def _run(self) -> None:
        while True:
            if not self._wait_for_work():
                return
            if self.batch_wait_s:  # let requests sent together arrive together
                time.sleep(self.batch_wait_s)
            with self._lock:
                self._queue = deque(j for j in self._queue if not j.cancelled)
                head = self._queue[0] if self._queue else None
            if head is None:
                continue
            self.busy = True
            try:
                if self.runs_continuously(head):
                    self._continuous(self.key(head))
                else:
                    batch = self._take()
                    if batch:
                        self._sample(batch)
            finally:
                self.busy = False

    def _generator(self, seed: int | None = None) -> torch.Generator:
        """A batch's random stream: seeded, or from a fresh random seed."""
        seed = seed if seed is not None else int(torch.randint(0, 2 ** 62, (1,)))
        return torch.Generator(device=self.device or "cpu").manual_seed(seed)

    def _limit(self, job: Job) -> int:
        return len(job.prompt) + job.max_tokens

    def _continuous(self, key) -> None:
        """Run one continuous batch of requests with this key until no row is left and none can join."""
        jobs = self._take(key)
        if not jobs:
            return
        spec = jobs[0].spec
        g = self._generator()
        streams = draws_by_row(spec.predictor, self.method)
        batch = ContinuousBatch(self.method, self.backbone, spec, bos_id=self.tokenizer.bos_id,
                                eos_id=self.tokenizer.eos_id, generator=g, device=self.device, row_streams=streams)
        # what the batch holds, by a serial number per job; a job's entries go when it is answered or
        # gone, so a batch that never empties (steady traffic) holds only its live requests
        rows: dict[tuple[int, int], list[int]] = {}  # (job, row) -> generated so far
        live: dict[int, Job] = {}
        left: dict[int, int] = {}  # job -> rows not done yet
        serial = itertools.count()

        def admit(new: list[Job]) -> None:
            joining = []
            for j in new:
                n = next(serial)
                live[n], left[n] = j, j.n
                for r in range(j.n):
                    rows[(n, r)] = []
                    own = (row_generator(j.seed, r, self.device),) if streams and j.seed is not None else ()
                    joining.append(((n, r), j.prompt, self._limit(j), *own))
            batch.join(joining)

        def forget(n: int) -> None:
            job = live.pop(n)
            del left[n]
            for r in range(job.n):
                rows.pop((n, r), None)

        with torch.inference_mode():
            try:
                admit(jobs)
                while len(batch):
                    gone = [k for k in batch.keys if live[k[0]].cancelled]
                    if gone:
                        batch.drop(gone)
                        for n in {k[0] for k in gone}:
                            forget(n)
                    if len(batch) < self.max_batch_rows:
                        admit(self._take(key, self.max_batch_rows - len(batch)))
                    if not len(batch):
                        break
                    t0, calls = time.perf_counter(), batch.calls
                    updates = batch.step()
                    if self.on_batch is not None:
                        self.on_batch(rows=len(updates), seconds=time.perf_counter() - t0, calls=batch.calls - calls)
                    ended = []
                    for u in updates:
                        n, r = u.key
                        j = live[n]
                        got = rows[u.key]
                        got += u.tokens
                        done = u.done or len(got) >= j.max_tokens or self._stopped(j, got)
                        j.tell(r, u.tokens, done)
                        if done:
                            if not u.done:
                                ended.append(u.key)
                            left[n] -= 1
                            if left[n] == 0:
                                j.loop.call_soon_threadsafe(
                                    _settle, j.future, [j.prompt + rows[(n, i)] for i in range(j.n)], None)
                                forget(n)
                    if ended:
                        batch.drop(ended)
            except Exception as err:  # noqa: BLE001 - every request in the batch learns of it
                for j in live.values():
                    j.loop.call_soon_threadsafe(_settle, j.future, None, err)

    def _stopped(self, job: Job, generated: list[int]) -> bool:
        """Whether a row's text holds one of its request's stop strings."""
        if not job.stop:
            return False
        text = self.tokenizer.decode([t for t in generated if t < self.tokenizer.vocab_size])
        return any(s in text for s in job.stop)

    def sampled_length(self, batch: list[Job]) -> int:
        """How many positions a batch samples: a whole-window model its window; AR and block models
        only as far as the batch's longest prompt + max_tokens (block models in whole blocks, past the
        model's length if asked)."""
        if strategy_for(self.method, self.length, None) == "window":
            return self.length
        need = max(self._limit(j) for j in batch)
        if self.method.block_size:
            return -(-need // self.method.block_size) * self.method.block_size
        return min(self.length, need)

    def _sample(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        seed = batch[0].seed
        g = self._generator(seed)
        try:
            with torch.inference_mode():
                width = self.sampled_length(batch)
                spec = batch[0].spec
                if self.method.block_size:  # block by block to the batch's longest need, stopping at EOS
                    spec = replace(spec, total_length=width if width > self.length else None, stop_at_eos=True)
                watch = _Watch(batch)
                ids = sample_prompted(self.method, self.backbone, [j.prompt for j in batch], [j.n for j in batch],
                                      min(width, self.length), spec, bos_id=self.tokenizer.bos_id,
                                      eos_id=self.tokenizer.eos_id, generator=g, device=self.device,
                                      observer=watch).cpu()
        except Abandoned:
            return
        except Exception as err:  # noqa: BLE001 - every waiting request learns of it
            for j in batch:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        row = 0
        for j in batch:
            j.loop.call_soon_threadsafe(_settle, j.future, ids[row:row + j.n].tolist(), None)
            row += j.n
        if self.on_batch is not None:
            self.on_batch(rows=row, seconds=time.perf_counter() - t0, calls=watch.calls)


def row_generator(seed: int, row: int, device=None) -> torch.Generator:
    """The random stream of row `row` of a request with `seed` (its rows' streams differ; row 0's is
    torch.Generator().manual_seed(seed))."""
    mixed = seed if row == 0 else (seed * 0x9E3779B97F4A7C15 + row) % (2 ** 63)
    return torch.Generator(device=device or "cpu").manual_seed(mixed)


def _settle(future: asyncio.Future, value, error) -> None:
    if future.done():  # the request gave up (timeout, client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


__all__ = ["Abandoned", "Engine", "Job", "QueueFull"]
