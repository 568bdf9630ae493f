"""Memory and speed of the data layer against corpus size; prints JSON.

    python benchmarks/data_pipeline.py [--sizes 20 80 320] [--procs 1 2] [--baseline-max 80]

For JSONL corpora of 20, 80 and 320 MB of text (documents of big.txt paragraphs and of the
Wikipedia sample that ships in the PyPI package gensim, repeated with their paragraphs shuffled
until the size is reached), each measured in a fresh process:

- build: the GPT-2 token store at length 1024 (wrap) with 1 and 2 tokenizer processes: seconds,
  tokens/s, peak RSS of the building process and of its largest worker, store bytes per token;
- train_read: a training process that maps the store and reads 1,000 random batches of 8 blocks
  through the DataLoader and the resumable sampler: peak RSS and its anonymous (non-file) part;
- baseline: the in-memory builder duolm used before the store (tests/in_memory_blocks.py) at the
  sizes up to --baseline-max: seconds and peak RSS.
"""
from __future__ import annotations

import argparse
import bz2
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def anon_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wiki_documents() -> list[str]:
    """Articles of the Wikipedia sample in gensim's test data, markup stripped roughly.

    Refuses without it: the corpus would silently be big.txt alone, and its figures another corpus's."""
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    path = None if spec is None else (Path(spec.origin).parent / "test" / "test_data" /
                                      "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    if path is None or not path.exists():
        raise SystemExit("benchmarks/data_pipeline.py: the corpus mixes in gensim's Wikipedia sample; "
                         "pip install gensim (or pip install -e '.[bench]')")
    xml = bz2.open(path, "rt", encoding="utf-8", errors="replace").read()
    docs = []
    for text in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S):
        text = re.sub(r"\{\{.*?\}\}|\[\[(?:[^|\]]*\|)?([^\]]*)\]\]|&lt;.*?&gt;|&[a-z]+;", r"\1", text, flags=re.S)
        if len(text) > 200:
            docs.append(text)
    return docs


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> dict:
    from duolm.data.corpora import big_txt_path

    text = big_txt_path().read_text(encoding="utf-8", errors="replace")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    base = ["\n\n".join(paras[i:i + 32]) for i in range(0, len(paras), 32)]
    wiki = wiki_documents()
    base += wiki
    rng = random.Random(seed)
    target, written, n = megabytes * 1_000_000, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            for d in base:
                parts = d.split("\n\n")
                if n >= len(base):  # later copies: paragraphs shuffled, so no two documents are equal
                    rng.shuffle(parts)
                line = json.dumps({"text": "\n\n".join(parts)}) + "\n"
                f.write(line)
                written += len(line.encode())
                n += 1
                if written >= target:
                    break
    return {"documents": n, "bytes": written, "wikipedia_documents": len(wiki)}


def child_build(args) -> dict:
    from duolm.data.pipeline import build_splits
    from duolm.data.tokenizers import load_tokenizer

    tok = load_tokenizer("gpt2")
    t0 = time.perf_counter()
    splits = build_splits("local", tok, 1024, "wrap", args.cache, num_proc=args.num_proc, path=args.corpus)
    seconds = time.perf_counter() - t0
    tokens = sum(s.meta["n_tokens"] for s in splits.values())
    size = sum((s.directory / "tokens.bin").stat().st_size for s in splits.values())
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), "peak_worker_rss_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
            "store_bytes_per_token": round(size / tokens, 3)}


def child_train_read(args) -> dict:
    import torch

    from duolm.data.pipeline import build_splits
    from duolm.data.tokenizers import load_tokenizer
    from duolm.training.datamodule import BlockDataModule

    tok = load_tokenizer("gpt2")
    splits = build_splits("local", tok, 1024, "wrap", args.cache, num_proc=1, path=args.corpus)  # maps the store
    dm = BlockDataModule(splits["train"], splits["valid"], batch_size=8, eval_batch_size=8, global_batch_size=8)
    t0 = time.perf_counter()
    n = 0
    for x, v in dm.train_dataloader():
        assert x.shape == (8, 1024) and x.dtype == torch.int64
        n += 1
        if n == 1000:
            break
    return {"batches": n, "seconds": round(time.perf_counter() - t0, 2), "blocks": len(splits["train"]),
            "peak_rss_mb": round(peak_rss_mb(), 1), "anon_rss_mb": round(anon_rss_mb(), 1)}


def child_baseline(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    import in_memory_blocks

    from duolm.data import corpora
    from duolm.data.tokenizers import load_tokenizer

    tok = load_tokenizer("gpt2")
    t0 = time.perf_counter()
    docs = corpora.read_local(args.corpus)[0]
    ids = [tok.encode(d) for d in docs]
    x, v = in_memory_blocks.wrap_blocks(ids, 1024, tok.bos_id, tok.eos_id, tok.vocab_size)
    seconds = time.perf_counter() - t0
    tokens = sum(map(len, ids)) + 2 * len(ids)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), "held_bytes_per_token": round((x.numel() * 9) / tokens, 2)}


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 80, 320])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--baseline-max", type=int, default=80)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--child")
    ap.add_argument("--corpus")
    ap.add_argument("--cache")
    ap.add_argument("--num-proc", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        fn = {"build": child_build, "train_read": child_train_read, "baseline": child_baseline}[args.child]
        print(json.dumps(fn(args)))
        return
    results = {**provenance(), "cpus": os.cpu_count(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.sizes:
            corpus = Path(tmp) / f"corpus{mb}.jsonl"
            row = {"corpus": make_corpus(corpus, mb)}
            for p in args.procs:
                cache = Path(tmp) / f"cache{mb}-{p}"
                row[f"build_{p}proc"] = run_child("build", corpus=corpus, cache=cache, num_proc=p)
            row["train_read"] = run_child("train_read", corpus=corpus, cache=Path(tmp) / f"cache{mb}-{args.procs[0]}")
            if mb <= args.baseline_max:
                row["baseline_in_memory"] = run_child("baseline", corpus=corpus)
            results["sizes"][str(mb)] = row
            print(json.dumps({mb: row}), file=sys.stderr)
            for p in args.procs:
                import shutil

                shutil.rmtree(Path(tmp) / f"cache{mb}-{p}", ignore_errors=True)
            corpus.unlink()
    sizes = [str(s) for s in args.sizes]
    if len(sizes) > 1:
        lo, hi = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
        p0 = args.procs[0]
        results["growth_mb"] = {
            "build_peak_rss": round(hi[f"build_{p0}proc"]["peak_rss_mb"] - lo[f"build_{p0}proc"]["peak_rss_mb"], 1),
            "train_read_peak_rss": round(hi["train_read"]["peak_rss_mb"] - lo["train_read"]["peak_rss_mb"], 1)}
        if len(args.procs) > 1:
            results["speedup_2proc"] = {s: round(results["sizes"][s][f"build_{args.procs[1]}proc"]["tokens_per_second"]
                                                 / results["sizes"][s][f"build_{p0}proc"]["tokens_per_second"], 2)
                                        for s in sizes}
    emit(results, args.out)


if __name__ == "__main__":
    main()
