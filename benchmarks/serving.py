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
  first chunk (the whole answer for now: no block-by-block streaming yet);
- the batch-size histogram from /metrics (rows per network batch) and the speed-up over one at a time.

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


def start(model: str, steps: int, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "duolm", "serve", f"eval.checkpoint_path={model}",
                             f"serve.port={port}", f"sampling.steps={steps}", "serve.batch_wait_ms=5"],
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
    """(seconds to the whole answer, seconds to the first chunk, completion tokens)."""
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
            if first is None:
                first = time.perf_counter() - t0
            line = line.decode().strip()
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0].get("text", "")
    return time.perf_counter() - t0, first, len(text)


def batch_histogram(url: str) -> dict:
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("duolm_batch_rows_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def run_setting(url: str, prompts: list[str], clients: int, max_tokens: int, stream: bool) -> dict:
    results, lock, todo = [], threading.Lock(), list(prompts)

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop()
            r = ask(url, p, max_tokens, stream)
            with lock:
                results.append(r)

    before = batch_histogram(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = batch_histogram(url)
    lat = sorted(r[0] for r in results)
    first = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    hist = {le: after[le] - before.get(le, 0) for le in after}
    return {"clients": clients, "requests": len(results), "stream": stream, "seconds": wall,
            "tokens_per_second": tokens / wall, "completion_tokens": tokens,
            "latency_p50": statistics.median(lat), "latency_p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "first_chunk_p50": statistics.median(first), "batch_rows_cumulative": hist}


def measure(models: dict, requests: int, max_tokens: int, steps: int, work: Path) -> dict:
    """For each model (name -> eval.checkpoint_path), a server and the settings: one client (the
    baseline), 8 and 32 clients, 32 clients streaming."""
    words = "the old man and the sea said that it was a long way home".split()
    prompts = [" ".join(words[i % len(words):][:1 + i % 5]) for i in range(requests)]
    out = {}
    for name, path in models.items():
        proc, url = start(path, steps, work)
        try:
            ask(url, "warm up", max_tokens, False)
            rows = [run_setting(url, prompts, 1, max_tokens, False)]  # one at a time: the baseline
            for clients in (8, 32):
                rows.append(run_setting(url, prompts, clients, max_tokens, False))
            rows.append(run_setting(url, prompts, 32, max_tokens, True))
            base = rows[0]["tokens_per_second"]
            for r in rows:
                r["speedup_vs_one_at_a_time"] = r["tokens_per_second"] / base
            out[name] = rows
            print(f"{name}: " + ", ".join(f"{r['clients']} clients{' (stream)' if r['stream'] else ''} "
                                          f"{r['tokens_per_second']:.0f} tok/s x{r['speedup_vs_one_at_a_time']:.1f}"
                                          for r in rows), file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(120)
    return out


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
    tiny = ["model=tiny", "model.length=128", "model.dropout=0.0", "trainer.max_steps=1", "loader.global_batch_size=4",
            "run.final_validation=false", "run.final_samples=false", "trainer.enable_progress_bar=false"]
    duolm("train", "algo=ar", *tiny, f"run.dir={work / 'ar'}", cwd=work)
    duolm("train", "algo=mdlm", "algo.block_size=16", *tiny, f"run.dir={work / 'blocks'}", cwd=work)
    models = {"builtin:duo-bigtxt-dcd (whole window)": "builtin:duo-bigtxt-dcd",
              "model=tiny AR (KV cache)": str(work / "ar" / "model"),
              "model=tiny MDLM blocks of 16 (BD3-LM cache)": str(work / "blocks" / "model")}
    result = {**provenance(load_average_at_start=os.getloadavg()[0]), "requests": args.requests,
              "max_tokens": args.max_tokens, "steps": args.steps,
              "models": measure(models, args.requests, args.max_tokens, args.steps, work)}
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
