"""`duolm serve` as a user runs it: the real server (uvicorn, a subprocess) on a loopback port, talked
to with the official `openai` client and with raw HTTP for the error cases."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from duolm.app.cli import main  # noqa: E402

TINY = ["model.hidden_size=32", "model.cond_dim=16", "model.n_blocks=1", "model.n_heads=2", "model.length=64",
        "model.dropout=0.0", "trainer.enable_progress_bar=false", "logging.csv=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, cwd=None):
        self.port = free_port()
        self.log = open(Path(cwd or ".") / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "duolm", "serve", f"serve.port={self.port}", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {Path(self.log.name).read_text()}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def post(self, route: str, body) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.url + "/metrics").read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:  # a failed test left a batch running: do not hang on it
                self.proc.kill()
                raise
        self.log.close()


def trained(root: Path, *algo: str, steps: int = 2) -> str:
    """A tiny model trained for a few steps on the built-in corpus: the folder to serve."""
    assert main(["train", *algo, *TINY, f"trainer.max_steps={steps}", "loader.global_batch_size=8",
                 f"run.dir={root / 'run'}", "run.final_validation=false", "run.final_samples=false"]) == 0
    return str(root / "run" / "model")


@pytest.fixture(scope="module")
def mdlm(tmp_path_factory):
    """A few steps of a tiny MDLM on the built-in corpus: confidence decoding with the greedy proposal
    is deterministic (the prior is all mask), so a batched answer can be compared with one alone."""
    root = tmp_path_factory.mktemp("serve")
    model = trained(root, "algo=mdlm", steps=3)
    server = Server(f"eval.checkpoint_path={model}", "sampling.steps=8", "serve.batch_wait_ms=200",
                    cwd=root)
    yield server
    server.close()


def test_completions_through_the_openai_client(mdlm):
    c = mdlm.client
    assert [m.id for m in c.models.list().data] == ["model"]
    r = c.completions.create(model="model", prompt="the old man", max_tokens=12, n=3)
    assert len(r.choices) == 3 and all(len(ch.text) <= 12 for ch in r.choices)
    assert r.usage.prompt_tokens == len("the old man") + 1 and r.usage.completion_tokens <= 36
    assert {ch.finish_reason for ch in r.choices} <= {"stop", "length"}


def test_a_seed_reproduces_and_streaming_sends_the_same_text(mdlm):
    c = mdlm.client
    a = c.completions.create(model="model", prompt="once", max_tokens=20, seed=7)
    b = c.completions.create(model="model", prompt="once", max_tokens=20, seed=7)
    assert a.choices[0].text == b.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="model", prompt="once", max_tokens=20,
                                                                         seed=7, stream=True))
    assert streamed == a.choices[0].text
    other = [c.completions.create(model="model", prompt="once", max_tokens=20, seed=s).choices[0].text
             for s in (8, 9, 10)]
    assert any(t != a.choices[0].text for t in other)


def test_a_stop_sequence_ends_the_completion_before_it(mdlm):
    c = mdlm.client
    full = c.completions.create(model="model", prompt="a", max_tokens=30, seed=3).choices[0].text
    cut = full[5:8]
    assert cut
    r = c.completions.create(model="model", prompt="a", max_tokens=30, seed=3, stop=[cut])
    assert r.choices[0].text == full[:full.index(cut)] and r.choices[0].finish_reason == "stop"


def test_batched_requests_equal_the_same_requests_alone(mdlm):
    """Four requests sent together are sampled in one batch (the batch-size histogram sees 4 rows) and
    each answer equals the same request sent alone, draw for draw (deterministic decoding)."""
    c = mdlm.client
    prompts = ["the", "old man", "and the sea said", "x"]
    extra = {"predictor": "confidence", "steps": 8}
    alone = [c.completions.create(model="model", prompt=p, max_tokens=16, extra_body=extra).choices[0].text
             for p in prompts]
    before = mdlm.metric('duolm_batch_rows_bucket{le="2.0"}'), mdlm.metric("duolm_batch_rows_count")
    together = [None] * 4

    def ask(i):
        together[i] = c.completions.create(model="model", prompt=prompts[i], max_tokens=16,
                                           extra_body=extra).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    small = mdlm.metric('duolm_batch_rows_bucket{le="2.0"}') - before[0]
    batches = mdlm.metric("duolm_batch_rows_count") - before[1]
    assert batches < 4 and small < batches + 1e-9 or batches == 1  # at least one batch held several requests


@pytest.mark.parametrize("body,param,needle", [
    (b"{not json", None, "not JSON"),
    ({"prompt": "a", "max_tokens": 1000}, "max_tokens", "max_tokens must be at most 62"),
    ({"prompt": "a" * 80}, "prompt", "prompt is 81 tokens; this model reads at most 63"),
    ({"prompt": "a", "bogus": 1}, "bogus", "bogus is not a field duolm reads"),
    ({"prompt": "a", "temperature": 2.5}, "temperature", "temperature must be a number from 0 to 2"),
    ({"prompt": "a", "n": 0}, "n", "n must be an integer from 1 to 16"),
    ({"prompt": "a", "predictor": "nope"}, "predictor", "predictor must be one of"),
    ({"prompt": "a", "steps": 0}, "steps", "steps must be an integer from 1 to 4096"),
    ({"prompt": "a", "top_p": 2}, "top_p", "top_p"),
    ({"prompt": "a", "logprobs": 3}, "logprobs", "logprobs=3 is not supported"),
    ({"prompt": 5}, "prompt", "prompt must be a string"),
    ({"prompt": "a", "confidence_threshold": 0.5}, "confidence_threshold", "is for predictor=confidence"),
])
def test_bad_requests_get_400_with_one_sentence_naming_the_field(mdlm, body, param, needle):
    status, answer, _ = mdlm.post("/v1/completions", body)
    assert status == 400 and needle in answer["error"]["message"] and answer["error"]["param"] == param
    assert "\n" not in answer["error"]["message"]


def test_chat_needs_a_chat_template(mdlm):
    status, answer, _ = mdlm.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "no chat template" in answer["error"]["message"]


def test_health_and_metrics(mdlm):
    health = json.loads(urllib.request.urlopen(mdlm.url + "/health").read())
    assert health["status"] == "ok" and health["model"] == "model"
    assert mdlm.metric("duolm_requests_total") >= 1 and mdlm.metric("duolm_generated_tokens_total") > 0


def _slow_server(tmp_path, *extra):
    """A tiny whole-window MDLM sampling with a million steps: its batches never end by themselves."""
    root = tmp_path
    model = trained(root, "algo=mdlm", steps=1)
    return Server(f"eval.checkpoint_path={model}", "sampling.steps=1000000", *extra, cwd=root)


def _raw_post(server, body: dict) -> socket.socket:
    """A request sent by hand; closing the socket is its client going away."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _until(condition, what: str, seconds: float = 60):
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds} s for {what}")


def _health(server) -> dict:
    return json.loads(urllib.request.urlopen(server.url + "/health").read())


GONE = 'duolm_requests_total{route="/v1/completions",status="499"}'


@pytest.mark.slow
def test_a_full_queue_answers_429_and_a_client_gone_frees_its_place(tmp_path):
    """The first request samples (forever), the second waits, the third finds the queue full; the
    second's client goes away (499, its place freed), then the first's: its batch stops at its next
    denoising step and the worker is free again."""
    server = _slow_server(tmp_path, "serve.max_queue=1", "serve.batch_wait_ms=0")
    try:
        first = _raw_post(server, {"prompt": "a", "max_tokens": 4})
        _until(lambda: _health(server)["busy"], "the first request to be sampled")
        second = _raw_post(server, {"prompt": "b", "max_tokens": 4, "seed": 1})
        _until(lambda: _health(server)["queue"] == 1, "the second request to wait")
        status, answer, headers = server.post("/v1/completions", {"prompt": "c", "max_tokens": 4})
        assert status == 429 and headers.get("retry-after") == "1" and "busy" in answer["error"]["message"]
        second.close()
        _until(lambda: server.metric(GONE) == 1, "the second client's 499")
        assert _health(server)["queue"] == 0 and _health(server)["busy"]
        first.close()
        _until(lambda: server.metric(GONE) == 2, "the first client's 499")
        _until(lambda: not _health(server)["busy"], "the abandoned batch to stop")
    finally:
        server.close()


@pytest.mark.slow
def test_sigterm_drains_what_it_holds_then_exits(tmp_path):
    root = tmp_path
    model = trained(root, "algo=mdlm", steps=1)
    server = Server(f"eval.checkpoint_path={model}", "sampling.steps=1000", cwd=root)
    answers = []
    t = threading.Thread(target=lambda: answers.append(server.post("/v1/completions", {"prompt": "a",
                                                                                        "max_tokens": 4,
                                                                                        "steps": 4096})))
    t.start()
    _until(lambda: _health(server)["busy"], "the request to be sampled")
    server.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert answers and answers[0][0] == 200 and len(answers[0][1]["choices"]) == 1
    assert server.proc.wait(60) == 0
    server.close()


def test_chat_on_a_diffusion_gemma_folder(tmp_path):
    """A transformers folder with a chat template: chat completions through the openai client, the
    prompt framed by the template; nothing written into the folder."""
    from diffusion_gemma_tiny import tiny_model, tokenizer

    folder = tmp_path / "dg"
    tiny_model().save_pretrained(folder)
    tok = tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(folder)
    before = sorted(p.name for p in folder.iterdir())
    server = Server(f"eval.checkpoint_path={folder}", "sampling.predictor=entropy_bound", "sampling.steps=4",
                    cwd=tmp_path)
    try:
        r = server.client.chat.completions.create(model="dg", messages=[{"role": "user", "content": "w5 w6"}],
                                                  max_tokens=8, n=2)
        assert len(r.choices) == 2 and all(ch.message.role == "assistant" for ch in r.choices)
        assert r.usage.prompt_tokens >= 3
        chunks = list(server.client.chat.completions.create(
            model="dg", messages=[{"role": "user", "content": "w5"}], max_tokens=8, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        server.close()
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("algo", [["algo=ar"], ["algo=mdlm", "algo.block_size=8"]])
def test_ar_and_block_models_serve_batches_of_different_prompts(tmp_path, algo):
    """AR (its KV cache) and block diffusion (BD3-LM: block by block with the cache, here past the
    model's 64 tokens) answer concurrent requests of different prompt lengths in one batch; for the
    block model with deterministic decoding each answer equals the same request alone."""
    model = trained(tmp_path, *algo)
    server = Server(f"eval.checkpoint_path={model}", "sampling.steps=4",
                    "serve.batch_wait_ms=300", cwd=tmp_path)
    try:
        c = server.client
        blocks = len(algo) > 1
        max_tokens = 90 if blocks else 20
        extra = {"predictor": "confidence"} if blocks else {}
        prompts = ["a", "the old man", "and"]
        alone = [c.completions.create(model="model", prompt=p, max_tokens=max_tokens, extra_body=extra)
                 for p in prompts]
        assert all(r.usage.completion_tokens <= max_tokens for r in alone)
        short = c.completions.create(model="model", prompt="a", max_tokens=5)  # fewer blocks than the model's length
        assert short.usage.completion_tokens <= 5
        together = [None] * 3

        def ask(i):
            together[i] = c.completions.create(model="model", prompt=prompts[i], max_tokens=max_tokens,
                                               extra_body=extra)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None and len(r.choices) == 1 for r in together)
        if blocks:
            assert [r.choices[0].text for r in together] == [r.choices[0].text for r in alone]
        assert server.metric('duolm_batch_rows_bucket{le="1.0"}') < server.metric("duolm_batch_rows_count")
    finally:
        server.close()


def test_block_model_rows_join_a_running_batch_leave_it_early_and_stream_each_block(tmp_path):
    """Continuous batching on a BD3-LM model (blocks of 8, deterministic decoding): a short request
    sent while a long one runs joins the running batch and is answered while the long one is still
    being written (it neither waits for the batch to end nor holds it up); its text equals the same
    request alone; a streamed request arrives block by block (several text chunks per choice)
    whose concatenation is the non-streamed answer."""
    model = trained(tmp_path, "algo=mdlm", "algo.block_size=8")
    server = Server(f"eval.checkpoint_path={model}", "sampling.predictor=confidence",
                    "sampling.steps=8", "serve.batch_wait_ms=0", cwd=tmp_path)
    try:
        c = server.client
        short_alone = c.completions.create(model="model", prompt="the", max_tokens=8).choices[0].text
        finished = []

        def long_request():
            c.completions.create(model="model", prompt="a", max_tokens=250)
            finished.append("long")

        t = threading.Thread(target=long_request)
        t.start()
        _until(lambda: _health(server)["busy"], "the long request to be sampled")
        short = c.completions.create(model="model", prompt="the", max_tokens=8).choices[0].text
        finished.append("short")
        t.join()
        assert finished == ["short", "long"] and short == short_alone
        whole = c.completions.create(model="model", prompt="and so", max_tokens=60, n=2)
        pieces = {0: [], 1: []}
        reasons = {}
        for chunk in c.completions.create(model="model", prompt="and so", max_tokens=60, n=2, stream=True):
            ch = chunk.choices[0]
            if ch.text:
                pieces[ch.index].append(ch.text)
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
        assert ["".join(pieces[i]) for i in (0, 1)] == [ch.text for ch in whole.choices]
        assert set(reasons) == {0, 1} and max(len(p) for p in pieces.values()) >= 3  # block by block
    finally:
        server.close()


def test_ar_streams_token_by_token(tmp_path):
    model = trained(tmp_path, "algo=ar")
    server = Server(f"eval.checkpoint_path={model}", "serve.batch_wait_ms=0", cwd=tmp_path)
    try:
        chunks = list(server.client.completions.create(model="model", prompt="a", max_tokens=20, stream=True,
                                                       stop=["zzz"], n=4))
        greedy = server.client.completions.create(model="model", prompt="the", max_tokens=12, temperature=0, n=3)
        assert len({ch.text for ch in greedy.choices}) == 1  # the argmax: every row the same
        texts = [ch.choices[0].text for ch in chunks if ch.choices[0].text]
        # a character tokenizer: one chunk per token, the four rows interleaved as they are written
        assert len(texts) >= 3 and all(len(t) == 1 for t in texts)
        assert sorted(ch.choices[0].index for ch in chunks if ch.choices[0].finish_reason) == [0, 1, 2, 3]
    finally:
        server.close()


def test_temperature_block_size_and_stream_drafts(mdlm):
    """A whole-window model: temperature is read (0 to 2); block_size maps to confidence decoding in
    blocks; stream_drafts sends each step's draft (masks as '_') before the answer."""
    status, _, _ = mdlm.post("/v1/completions", {"prompt": "the", "max_tokens": 12, "temperature": 0.5})
    assert status == 200
    status, answer, _ = mdlm.post("/v1/completions", {"prompt": "the", "max_tokens": 12, "block_size": 8,
                                                      "predictor": "confidence"})
    assert status == 200
    status, answer, _ = mdlm.post("/v1/completions", {"prompt": "the", "block_size": 8, "predictor": "ancestral"})
    assert status == 400 and answer["error"]["param"] == "block_size"
    status, answer, _ = mdlm.post("/v1/completions", {"prompt": "the", "temperature": 3})
    assert status == 400 and answer["error"]["param"] == "temperature"
    status, answer, _ = mdlm.post("/v1/completions", {"prompt": "the", "stream_drafts": True})
    assert status == 400 and "stream=true" in answer["error"]["message"]
    drafts, text, reason = [], "", None
    for chunk in mdlm.client.completions.create(model="model", prompt="the", max_tokens=12, stream=True,
                                                extra_body={"stream_drafts": True, "steps": 8}):
        ch = chunk.choices[0]
        extra = ch.model_extra or {}
        if "draft" in extra:
            drafts.append((extra["step"], extra["draft"]))
        text += ch.text
        reason = ch.finish_reason or reason
    steps = [s for s, _ in drafts]
    assert steps == sorted(steps) and steps[0] == 0 and len(drafts) >= 8
    assert set(drafts[0][1]) == {"_"} and len(drafts[0][1]) == 12  # the prior: all masks
    assert reason in ("stop", "length") and drafts[-1][1].startswith(text[:1])


@pytest.mark.parametrize("algo", [["algo=mdlm", "algo.block_size=8"], ["algo=ar"]])
def test_a_seeded_request_in_a_busy_batch_draws_what_it_draws_alone(tmp_path, algo):
    """An exact random sampler (ancestral; AR's draw) with each row's own stream: a seeded request sent
    alone and the same request sent while others are being sampled get the same completions, draw
    for draw, and a different seed gets others."""
    model = trained(tmp_path, *algo)
    server = Server(f"eval.checkpoint_path={model}", "sampling.steps=6", "serve.batch_wait_ms=0",
                    cwd=tmp_path)
    try:
        c = server.client
        ask = dict(model="model", prompt="the old", max_tokens=40, n=2, seed=7)
        alone = [ch.text for ch in c.completions.create(**ask).choices]
        others = []

        def busy(i):
            others.append(c.completions.create(model="model", prompt="a" * (i + 1), max_tokens=60, n=2))

        threads = [threading.Thread(target=busy, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        _until(lambda: _health(server)["busy"], "the others to be sampled")
        together = [ch.text for ch in c.completions.create(**ask).choices]
        for t in threads:
            t.join()
        assert together == alone and len(others) == 3
        assert [ch.text for ch in c.completions.create(**{**ask, "seed": 8}).choices] != alone
    finally:
        server.close()


def test_a_stream_whose_client_goes_away_leaves_the_batch_at_the_next_block(tmp_path):
    """A streamed request on a block model: after its first chunk the client closes the connection;
    its rows leave the running batch at the next block, so the network calls spent stay far below what
    the whole answer takes (31 blocks of 8 denoising steps)."""
    model = trained(tmp_path, "algo=mdlm", "algo.block_size=8")
    server = Server(f"eval.checkpoint_path={model}", "sampling.predictor=confidence",
                    "sampling.steps=8", "serve.batch_wait_ms=0", cwd=tmp_path)
    try:
        sock = _raw_post(server, {"prompt": "the", "max_tokens": 250, "stream": True,
                                  "confidence_threshold": 1.0})
        seen = b""
        while b"data: {" not in seen:
            seen += sock.recv(4096)
        sock.close()
        _until(lambda: not _health(server)["busy"], "the batch to let the gone client's rows go")
        spent = server.metric("duolm_network_calls_total")
        assert 0 < spent < 8 * 31 / 2
    finally:
        server.close()
