"""The HTTP side of `duolm serve`: an ASGI app (FastAPI) with OpenAI's routes over the batching engine.

    /v1/completions, /v1/chat/completions   (stream=true: Server-Sent Events in OpenAI's chunk format)
    /v1/models, /health, /metrics           (Prometheus text)

Streaming: a continuously batched model (blocks, AR) sends each row's text as its blocks (tokens)
are committed; other models send the whole answer when their batch ends.

A bad request is a 400 whose message is one sentence naming the field; a full queue a 429 with
Retry-After; a request past serve.request_timeout a 504 (its place in the queue is freed). A client
that goes away while its request waits frees its place; while it is sampled, its rows leave the
batch at the next step (a whole batch stops once all of its requests are gone).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from duolm.app.serving.engine import Engine, Job, QueueFull
from duolm.app.serving.protocol import BadRequest, ChunkWriter, chunks, completion_text, draft_text, parse, response


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


@dataclass
class ServedModel:
    """What the server answers with: a loaded model, its default sampler spec and limits."""

    name: str
    method: object
    backbone: object
    tokenizer: object
    config: dict
    spec: object            # the default SamplerSpec (sampling.* of the command line)
    max_n: int = 16
    max_length: int = 0     # prompt + completion at most (0: the model's length)

    def __post_init__(self):
        self.max_length = self.max_length or self.config["length"]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("duolm_requests", "Requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.tokens = Counter("duolm_generated_tokens", "Completion tokens returned", registry=r)
        self.prompt_tokens = Counter("duolm_prompt_tokens", "Prompt tokens read", registry=r)
        self.queue = Gauge("duolm_queue_length", "Requests waiting for a batch", registry=r)
        self.calls = Counter("duolm_network_calls", "Network calls (denoising steps, AR tokens, cache commits)",
                             registry=r)
        self.batch_rows = Histogram("duolm_batch_rows", "Rows (completions) per batch: per step under continuous "
                                    "batching, per whole batch otherwise", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("duolm_batch_seconds", "Seconds per batch", registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.latency = Histogram("duolm_request_seconds", "Seconds from arrival to answer", registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

    def answered(self, route: str, completion_tokens: int, prompt_tokens: int, started: float) -> None:
        """A request answered whole (200): its tokens and latency."""
        self.tokens.inc(completion_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.requests.labels(route, "200").inc()
        self.latency.observe(time.perf_counter() - started)

    def on_batch(self, rows: int, seconds: float, calls: int = 0) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)
        self.calls.inc(calls)


def sse(payload) -> str:
    """One Server-Sent Event carrying a JSON object."""
    return f"data: {json.dumps(payload)}\n\n"


TIMED_OUT = {"error": {"message": "the request ran past serve.request_timeout"}}


def error(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


def build_app(model: ServedModel, *, max_batch_rows: int = 32, max_queue: int = 64, request_timeout: float = 300.0,
              batch_wait_s: float = 0.005, device=None, continuous: bool = True) -> FastAPI:
    metrics = Metrics()
    engine = Engine(model.method, model.backbone, model.tokenizer, model.config["length"],
                    max_batch_rows=max_batch_rows, max_queue=max_queue, batch_wait_s=batch_wait_s, device=device,
                    on_batch=metrics.on_batch, continuous=continuous)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        # uvicorn has answered every open request by now (SIGTERM drains them first); the worker ends
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="duolm", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.model = engine, metrics, model

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.name, "queue": engine.queue_length(), "busy": engine.busy}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0, "owned_by": "duolm"}]}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(engine.queue_length())
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    async def answer(request: Request, kind: str, route: str):
        t0 = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            metrics.requests.labels(route, "400").inc()
            return error(400, "the request body is not JSON")
        try:
            s = parse(body, kind, model)
        except BadRequest as err:
            metrics.requests.labels(route, "400").inc()
            return error(400, str(err), err.param)
        except ValueError as err:  # the tokenizer's or the template's own refusal of this input
            metrics.requests.labels(route, "400").inc()
            return error(400, (str(err).splitlines() or ["the request cannot be read"])[0])
        updates: asyncio.Queue = asyncio.Queue()
        job = Job(s.prompt, s.n, s.max_tokens, s.spec, s.seed, stop=list(s.stop),
                  drafts=(lambda row, step, ids: updates.put_nowait((row, step, ids))) if s.drafts else None)
        live = s.stream and engine.runs_continuously(job)  # each block (token) sent as it is made
        if live:
            job.stream = lambda row, tokens, done: updates.put_nowait((row, tokens, done))
        try:
            future = engine.submit(job)
        except QueueFull as err:
            metrics.requests.labels(route, "429").inc()
            return error(429, f"the server is busy: {err}; retry later", headers={"Retry-After": "1"})
        metrics.queue.set(engine.queue_length())

        async def finished():
            """The batch's rows for this request; a client gone while it waits gives its place up."""
            deadline = t0 + request_timeout
            try:
                while True:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        raise asyncio.TimeoutError
                    done, _ = await asyncio.wait({future}, timeout=min(0.25, left))
                    if done:
                        return future.result()
                    if await request.is_disconnected():
                        raise ClientGone
            finally:
                job.cancelled = True  # whether done or given up: nothing more to do for it

        def choices(ids):
            out, used = [], 0
            for row in ids:
                text, reason, count = completion_text(model.tokenizer, row, len(s.prompt), s.max_tokens, s.stop)
                out.append((text, reason))
                used += count
            return out, used

        if live:
            return StreamingResponse(streamed(request, job, s, kind, route, updates, t0), media_type="text/event-stream")
        if s.stream:
            async def events():
                if s.drafts:  # each denoising step's draft while the batch runs
                    write = ChunkWriter(kind, model.name)
                    while not future.done():
                        try:
                            row, step, ids = await asyncio.wait_for(updates.get(), timeout=0.25)
                        except asyncio.TimeoutError:
                            if time.perf_counter() > t0 + request_timeout or await request.is_disconnected():
                                break  # finished() below says which
                            continue
                        yield sse(write.draft(row, step, draft_text(model.tokenizer, ids)))
                try:
                    ids = await finished()
                except ClientGone:
                    metrics.requests.labels(route, "499").inc()
                    return
                except asyncio.TimeoutError:
                    yield sse(TIMED_OUT)
                    return
                picked, used = choices(ids)
                metrics.tokens.inc(used)
                metrics.prompt_tokens.inc(len(s.prompt) * s.n)
                for chunk in chunks(kind, model.name, picked):
                    if await request.is_disconnected():
                        return
                    yield sse(chunk)
                yield "data: [DONE]\n\n"
                metrics.requests.labels(route, "200").inc()
                metrics.latency.observe(time.perf_counter() - t0)

            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            ids = await finished()
        except ClientGone:
            metrics.requests.labels(route, "499").inc()
            return error(499, "the client closed the connection")
        except asyncio.TimeoutError:
            metrics.requests.labels(route, "504").inc()
            return error(504, f"the request ran past serve.request_timeout ({request_timeout:g} s)")
        except Exception as err:  # noqa: BLE001 - the sampler's own failure: one sentence, a 500
            metrics.requests.labels(route, "500").inc()
            return error(500, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        picked, used = choices(ids)
        metrics.answered(route, used, len(s.prompt) * s.n, t0)
        return response(kind, model.name, picked, len(s.prompt), used)

    async def streamed(request, job, s, kind, route, updates, t0):
        """Server-Sent Events of a continuously batched request: each row's new text as its blocks
        (tokens) are committed, its finish when it is done, then [DONE]."""
        write = ChunkWriter(kind, model.name)
        generated = {r: [] for r in range(s.n)}
        sent = {r: "" for r in range(s.n)}
        open_rows, used = set(range(s.n)), 0
        deadline = t0 + request_timeout
        try:
            while open_rows:
                left = deadline - time.perf_counter()
                if left <= 0:
                    metrics.requests.labels(route, "504").inc()
                    yield sse(TIMED_OUT)
                    return
                try:
                    row, tokens, done = await asyncio.wait_for(updates.get(), timeout=min(0.25, left))
                except asyncio.TimeoutError:
                    if job.future.done() and job.future.exception() is not None:
                        err = job.future.exception()
                        metrics.requests.labels(route, "500").inc()
                        yield sse({"error": {"message": f"{type(err).__name__}: {err}"}})
                        return
                    if await request.is_disconnected():
                        metrics.requests.labels(route, "499").inc()
                        return
                    continue
                generated[row] += tokens
                text, reason, count = completion_text(model.tokenizer, s.prompt + generated[row], len(s.prompt),
                                                      s.max_tokens, s.stop)
                if text.startswith(sent[row]) and len(text) > len(sent[row]):
                    yield sse(write(row, text[len(sent[row]):]))
                    sent[row] = text
                if done:
                    used += count
                    yield sse(write(row, "", reason))
                    open_rows.discard(row)
        finally:
            job.cancelled = True  # its rows leave the batch at the next step (a client gone, a timeout)
        yield "data: [DONE]\n\n"
        metrics.answered(route, used, len(s.prompt) * s.n, t0)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, "completion", "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await answer(request, "chat", "/v1/chat/completions")

    return app


__all__ = ["Metrics", "ServedModel", "build_app"]
