"""Every command in README.md, in the docs site's pages and in `duolm <command> --help` runs as
written, through `bash -c`.

The documentation is read in reading order (tests/doc_pages.py: README.md, then mkdocs.yml's nav).
Its bash blocks run as whole scripts (a block's loops and heredocs included), then every inline
`duolm ...` command of the text, then every --help example, in one fresh folder (so the quick
start's model is there for the commands that read it); a block the docs repeat (the quick start on
the home page) runs once. Only what the reader
would wait minutes for changes, and every change is listed here:

- `duolm` on the PATH is a wrapper that appends FAST overrides for its command (fewer steps, a
  tiny network, 2 samples, no judge model) and sends the commands that need what this machine
  lacks (ELSEWHERE: a GPU, the Hub, a dataset download) to `duolm config` with the same
  arguments, so the shell and duolm's config check still read them;
- installation (`python3 -m venv`, `pip install`) and the suite itself (`bash scripts/test.sh`)
  are shell functions that do nothing (CI's .ci/run runs them);
- `torchrun ... -m duolm` and `srun duolm` run the duolm command (with the wrapper's rules);
- the placeholders `<model>` and `<image model>` become the models earlier commands trained.

A command fails the test when it exits non-zero or prints a traceback.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from doc_pages import documentation, label

from duolm.app.cli import COMMAND_HELP

ROOT = Path(__file__).resolve().parents[1]

PLACEHOLDERS = {"<model>": "outputs/bigtxt-duo-demo/model", "<image model>": "outputs/mnist-duo_base-unet-cpu/model",
                "<any model>": "outputs/bigtxt-duo-demo/model", "<in>": "outputs/bigtxt-duo-demo/model",
                "<dir>": "converted", "<samples.json>": "s8.json", "<image samples>": "s16.json"}
# shown in the README as refused (one sentence, exit 1)
REFUSED = {"duolm train data=ptb"}

# length 48: the README's infilling template is 32 tokens with its blanks
TINY_DIT = ["model.hidden_size=32", "model.cond_dim=16", "model.n_blocks=1", "model.n_heads=2", "model.length=48"]
QUICK_RUN = ["trainer.max_steps=2", "loader.global_batch_size=8", "trainer.val_check_interval=1000",
             "trainer.limit_val_batches=1", "eval.max_batches=1", "sampling.num_samples=2", "sampling.steps=4"]
FAST = {  # command -> overrides appended (the image variant when the arguments name image data)
    "train": TINY_DIT + QUICK_RUN,
    "train-image": QUICK_RUN,
    "train-hf": QUICK_RUN + ["model.length=32", "loader.global_batch_size=2"],  # SmolLM2-135M: 2 steps of 2 x 32
    # instruction records: SmolLM2's chat template alone is 30-odd tokens of prompt
    "train-hf-sft": QUICK_RUN + ["model.length=64", "loader.global_batch_size=2"],
    "train-diffusion_gemma": QUICK_RUN,  # the docs' own tiny random folder: its shape is the folder's
    "distill": TINY_DIT + QUICK_RUN + ["distill.T=8"],
    "rl": ["rl.steps=2", "rl.prompts_per_step=2", "rl.group=2", "rl.valid_size=4", "rl.eval_every=1",
           "sampling.steps=4"],
    "sample": ["sampling.num_samples=2", "sampling.batch_size=2"],
    "eval": ["eval.max_batches=1"],  # and eval.judge=smollm2 becomes null (the judge loads a 135M model)
    "lm-eval": ["lm_eval.limit=2", "lm_eval.num_mc_samples=2"],
}
ELSEWHERE = {  # a pattern in the arguments -> what this machine lacks
    "trainer=gpu": "a GPU", "openwebtext": "the Hub (OpenWebText)", "data=wikitext2": "the Hub (WikiText-2)",
    "arc_easy": "the Hub (an lm-eval task's data)", "data=cifar10": "the Hub (CIFAR-10)",
    "me/duo-": "the Hub (a model repository)", "kuleshov-group/bd3lm-": "the Hub (BD3-LM's models)",
    # the help's example serves until stopped; the Serving page's block starts, queries and stops one
    "serve.port=8000": "a shell that stops the server (the Serving page's block does)",
}
ELSEWHERE_COMMANDS = {"push": "the Hub"}

WRAPPER = textwrap.dedent('''\
    #!{python}
    import json, os, subprocess, sys
    FAST, ELSEWHERE, ELSEWHERE_COMMANDS = json.loads(os.environ["DUOLM_DOC_RULES"])
    args = sys.argv[1:]
    command = args[0] if args else ""
    text = " ".join(args)
    lacks = ELSEWHERE_COMMANDS.get(command) or next((why for pat, why in ELSEWHERE.items() if pat in text), None)
    if lacks and command not in ("config", "--help", "-h"):
        args = ["config", *args[1:]]
    elif command == "train" and ("data=mnist" in text or "data=digits" in text):
        args = [*args, *FAST["train-image"]]
    elif command == "train" and "model=diffusion_gemma" in text:
        args = [*args, *FAST["train-diffusion_gemma"]]
    elif command == "train" and "model=hf" in text:
        args = [*args, *FAST["train-hf-sft" if "data.blocks=pad" in text else "train-hf"]]
    elif command in FAST and "--help" not in args:
        args = [*["eval.judge=null" if a == "eval.judge=smollm2" else a for a in args], *FAST[command]]
    if command in ("train", "distill", "eval", "data") and not lacks:
        args.append("data.cache_dir=" + os.environ["DUOLM_DOC_CACHE"])
    with open(os.environ["DUOLM_DOC_LOG"], "a") as log:
        log.write(json.dumps({{"given": sys.argv[1:], "ran": args, "lacks": lacks}}) + "\\n")
    # exec, not a child: a command the docs start in the background (duolm serve ... &) is this process,
    # so the docs' `kill $SERVER; wait $SERVER` reach it
    os.execv(sys.executable, [sys.executable, "-m", "duolm", *args])
''')

PREAMBLE = textwrap.dedent('''\
    python3() { if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && : > "$3/bin/activate"; else command python3 "$@"; fi; }
    pip() { echo "(pip $*: skipped, the test runs in the installed environment)"; }
    bash() { if [ "$1" = scripts/test.sh ]; then echo "(the suite: skipped)"; else command bash "$@"; fi; }
    torchrun() { while [ "$#" -gt 0 ] && [ "$1" != -m ]; do shift; done; shift 2; duolm "$@"; }
    srun() { "$@"; }
    set -e
''')


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def inline_commands(text: str) -> list[str]:
    """`duolm <command> key=value ...` spans of the text (outside code blocks); a span naming only a
    command ('duolm sample'), a schema ('data=…', '<name>') or optional keys ('[hub.private=true]')
    is prose, not a command."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`(duolm [a-z-]+ [^`]*=[^`]*)`", prose)
    return [c for c in spans if "…" not in c and "<name>" not in c and " [hub." not in c]


def help_examples() -> list[str]:
    return [e for _, _, examples in COMMAND_HELP.values() for e in examples]


def all_text() -> str:
    return "\n".join(page.read_text() for page in documentation())


def documented() -> list[tuple[str, str]]:
    """(where, script) in the order they run; a script the docs repeat runs once."""
    out = []
    for page in documentation():
        text = page.read_text()
        out += [(f"{label(page)} bash block {i + 1}", b) for i, b in enumerate(bash_blocks(text))]
        out += [(f"{label(page)} inline", c) for c in inline_commands(text)]
    out += [("duolm --help example", e) for e in help_examples()]
    seen, once = set(), []
    for where, script in out:
        if script not in seen:
            seen.add(script)
            once.append((where, script))
    return once


def test_the_documented_commands_are_found():
    """The extraction itself: the blocks, the inline infilling command and the examples are there."""
    scripts = [s for _, s in documented()]
    assert len(bash_blocks(all_text())) >= 8
    assert any("sampling.infill='the [___] sat on the [___:3] mat'" in s for s in inline_commands(all_text()))
    assert any("sampling.infill='the [___]" in e for e in help_examples())
    assert all(("<" not in s) or any(p in s for p in PLACEHOLDERS) or "<<'EOF'" in s or "<|" in s for s in scripts)


@pytest.mark.slow
def test_every_documented_command_runs_as_written_in_a_shell(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "duolm"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "commands.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DUOLM_DOC_LOG": str(log),
           "DUOLM_DOC_CACHE": str(tmp_path / "cache"), "DUOLM_DOC_RULES": json.dumps([FAST, ELSEWHERE,
                                                                                     ELSEWHERE_COMMANDS]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NODE_RANK": "0", "MASTER": "localhost"}
    env.pop("DUOLM_DEBUG", None)
    failures = []
    for where, script in documented():
        for placeholder, value in PLACEHOLDERS.items():
            script = script.replace(placeholder, value)
        proc = subprocess.run(["bash", "-c", PREAMBLE + script], cwd=work, env=env, capture_output=True, text=True,
                              timeout=900)
        output = proc.stdout + proc.stderr
        if script in REFUSED:
            if proc.returncode != 1 or "Traceback" in output or "duolm: error:" not in output:
                failures.append(f"{where}: {script!r} should be refused in one sentence:\n{output[-1500:]}")
            continue
        if proc.returncode or "Traceback" in output:
            failures.append(f"{where}: {script.strip()[:200]!r} exited {proc.returncode}:\n{output[-1500:]}")
    assert not failures, "\n\n".join(failures)
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    real = [r for r in ran if not r["lacks"]]
    assert len(real) >= 25 and {r["given"][0] for r in real} >= {"train", "sample", "eval", "distill", "plot",
                                                                  "convert", "lm-eval", "config"}
    assert (work / "outputs" / "bigtxt-duo-demo" / "model" / "config.json").is_file()
    assert (work / "outputs" / "bigtxt-duo-demo-dcd" / "model" / "config.json").is_file()  # distill: its own run
    assert (work / "quality.png").is_file() and (work / "fid.png").is_file()
