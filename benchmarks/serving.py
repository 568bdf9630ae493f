"""`duolm serve` under load, loopback only: throughput and latency at 1, 8 and 32 concurrent clients
against the same requests sent one at a time, for a whole-window, an AR and a block model.

    python benchmarks/serving.py [--out benchmarks/results/serving/cpu.json] [--requests 32] [--max-tokens 64]
                                 [--quick]

Models: the built-in `builtin:duo-bigtxt-dcd` (whole window, 128 characters) and `model=tiny` at
length 128 trained for one step as AR and as block diffusion (MDLM in blocks of 16, BD3-LM): what is
measured is the server and its batching, not text quality. Each setting sends the same `--requests`
completions (different prompts, `--max-tokens` tokens, no seed, the model's default sampler at
`--steps`), from `clients` threads at a time through one server process:

- tokens/s: completion tokens returned over the wall time of all requests;
- latency p50 / p99 (seconds from sending to the whole answer) and, with stream=true, the time to the
  first chunk with text (block and AR models stream each block / token; whole-window models the answer);
- the server's resident memory after each setting (it must not grow with the clients);
- network calls per completion token and the batch-size histogram from /metrics (rows per step under
  continuous batching, per batch otherwise), the speed-up over one at a time, and, for block and AR
  models, continuous batching against whole batches (serve.continuous=false) at 32 clients.

Requests ask for different lengths (max_tokens / 4 to max_tokens), as a server's requests do.

One JSON, bounded in count and time; it records its date, machine and commit.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # python benchmarks/serving.py
    from provenance import emit, provenance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duolm(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "duolm", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def start(model: str, steps: int, cwd: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "duolm", "serve", f"eval.checkpoint_path={model}",
                             f"serve.port={port}", f"sampling.steps={steps}", "serve.batch_wait_ms=5", *extra],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server for {model} exited")
            time.sleep(0.1)
    raise SystemExit(f"the server for {model} did not start")


def ask(url: str, prompt: str, max_tokens: int, stream: bool) -> tuple[float, float, int]:
    """(seconds to the whole answer, seconds to the first chunk with text, completion tokens; streamed:
    characters, which a character model's tokens are)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stream": stream}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            out = json.loads(r.read())
            return time.perf_counter() - t0, time.perf_counter() - t0, out["usage"]["completion_tokens"]
        text = ""
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: {"):
                piece = json.loads(line[6:])["choices"][0].get("text", "")
                if piece and first is None:
                    first = time.perf_counter() - t0
                text += piece
    total = time.perf_counter() - t0
    return total, total if first is None else first, len(text)


def scrape(url: str) -> tuple[dict, float]:
    """(the rows-per-batch histogram's cumulative buckets, network calls so far) from /metrics."""
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    buckets, calls = {}, 0.0
    for line in text.splitlines():
        if line.startswith("duolm_batch_rows_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("duolm_network_calls_total"):
            calls = float(line.rsplit(" ", 1)[1])
    return buckets, calls


def resident_mb(pid: int) -> float | None:
    """The server process's resident memory (Linux /proc), MB; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_setting(url: str, jobs: list[tuple[str, int]], clients: int, stream: bool) -> dict:
    """jobs: (prompt, max_tokens) sent by `clients` threads at a time."""
    results, lock, todo = [], threading.Lock(), list(jobs)

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                p, m = todo.pop()
            r = ask(url, p, m, stream)
            with lock:
                results.append(r)

    before, calls_before = scrape(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after, calls_after = scrape(url)
    lat = sorted(r[0] for r in results)
    first = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    hist = {le: after[le] - before.get(le, 0) for le in after}
    return {"clients": clients, "requests": len(results), "stream": stream, "seconds": wall,
            "tokens_per_second": tokens / wall, "completion_tokens": tokens,
            "latency_p50": statistics.median(lat), "latency_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "first_chunk_p50": statistics.median(first), "first_chunk_p99": first[min(len(first) - 1,
                                                                                       int(0.99 * len(first)))],
            "network_calls": calls_after - calls_before,
            "calls_per_completion_token": (calls_after - calls_before) / max(tokens, 1),
            "batch_rows_cumulative": hist}


# what each model is measured with: (label, extra serve settings, clients, stream)
CONTINUOUS = [("one at a time", (), 1, False), ("continuous batching", (), 8, False),
              ("continuous batching", (), 32, False), ("continuous batching, streamed", (), 32, True),
              ("whole batches (serve.continuous=false)", ("serve.continuous=false",), 32, False)]
WHOLE_WINDOW = [("one at a time", (), 1, False), ("whole batches", (), 8, False), ("whole batches", (), 32, False),
                ("whole batches, streamed", (), 32, True)]


def measure(models: dict, requests: int, max_tokens: int, steps: int, work: Path) -> dict:
    """For each model (name -> (eval.checkpoint_path, settings, extra serve args)), one server per
    distinct serve setting and every row of its settings; speed-ups against its one-at-a-time row.
    Requests ask for max_tokens / 4, / 2, 3/4 and all of max_tokens in turn (rows of different lengths)."""
    words = "the old man and the sea said that it was a long way home".split()
    jobs = [(" ".join(words[i % len(words):][:1 + i % 5]), max(1, max_tokens * (1 + i % 4) // 4))
            for i in range(requests)]
    out = {}
    for name, (path, settings, common) in models.items():
        rows = []
        for extra in dict.fromkeys(e for _, e, _, _ in settings):
            proc, url = start(path, steps, work, (*common, *extra))
            try:
                ask(url, "warm up", max_tokens, False)
                for label, e, clients, stream in settings:
                    if e == extra:
                        rows.append({"setting": label, **run_setting(url, jobs, clients, stream),
                                     "server_resident_mb_after": resident_mb(proc.pid)})
            finally:
                proc.terminate()
                proc.wait(120)
        base = rows[0]["tokens_per_second"]
        for r in rows:
            r["speedup_vs_one_at_a_time"] = r["tokens_per_second"] / base
        out[name] = rows
        print(f"{name}: " + ", ".join(f"{r['setting']} x{r['clients']} {r['tokens_per_second']:.0f} tok/s "
                                      f"(x{r['speedup_vs_one_at_a_time']:.1f}, first {r['first_chunk_p50']:.2f} s)"
                                      for r in rows), file=sys.stderr, flush=True)
    return out


def tiny_models(work: Path) -> dict:
    """`model=tiny` at length 128 trained for one step as AR and as MDLM in blocks of 16 (the server and
    its batching are measured, not text quality), with their settings rows."""
    tiny = ["model=tiny", "model.length=128", "model.dropout=0.0", "trainer.max_steps=1", "loader.global_batch_size=4",
            "run.final_validation=false", "run.final_samples=false", "trainer.enable_progress_bar=false"]
    duolm("train", "algo=ar", *tiny, f"run.dir={work / 'ar'}", cwd=work)
    duolm("train", "algo=mdlm", "algo.block_size=16", *tiny, f"run.dir={work / 'blocks'}", cwd=work)
    blocks = str(work / "blocks" / "model")
    return {"model=tiny AR (KV cache)": (str(work / "ar" / "model"), CONTINUOUS, ()),
            "model=tiny MDLM blocks of 16 (BD3-LM cache)": (blocks, CONTINUOUS, ()),
            "model=tiny MDLM blocks of 16, confidence decoding": (blocks, CONTINUOUS,
                                                                 ("sampling.predictor=confidence",))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/serving/cpu.json")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="few requests and tokens (checks the script runs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.steps = 4, 8, 2
    work = Path(tempfile.mkdtemp(prefix="duolm-serving-"))
    models = {"builtin:duo-bigtxt-dcd (whole window)": ("builtin:duo-bigtxt-dcd", WHOLE_WINDOW, ()),
              **tiny_models(work)}
    result = {**provenance(load_average_at_start=os.getloadavg()[0]), "requests": args.requests,
              "max_tokens": args.max_tokens, "steps": args.steps,
              "models": measure(models, args.requests, args.max_tokens, args.steps, work)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
