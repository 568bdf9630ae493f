"""Offline is one sentence, fast: what needs the Hub and cannot reach it says so and what to pass instead.

The Hub is made unreachable by pointing HF_ENDPOINT at a closed local port (connection refused at
once), with an empty HF cache, so the tests say the same on a machine with a network."""
import os
import subprocess
import sys
import time

import pytest

from duolm.io import hub_access
from duolm.io.hub_access import HubUnreachable, from_hub

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture()
def no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "")  # restored after the test: from_hub sets them for the process
    monkeypatch.setattr(hub_access, "_reachable", None)
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:
            for name in names:
                monkeypatch.setattr(sys.modules[module], name, getattr(sys.modules[module], name))
    return tmp_path


def test_an_unreachable_hub_is_found_at_once_and_a_failed_read_is_one_sentence(no_hub):
    t0 = time.perf_counter()
    assert hub_access.hub_reachable() is False
    assert time.perf_counter() - t0 < hub_access.PROBE_SECONDS  # refused, not timed out
    with pytest.raises(HubUnreachable) as err:
        with from_hub("the dataset someone/corpus", "pass data.data_files=<a .jsonl>"):
            assert os.environ["HF_HUB_OFFLINE"] == "1"  # the body runs against the local caches only
            raise ConnectionError("Couldn't reach someone/corpus on the Hub")
    assert str(err.value) == ("the Hugging Face Hub could not be reached (no network) and the dataset "
                              "someone/corpus is not in the local cache (ConnectionError); pass data.data_files=<a .jsonl>")
    assert not isinstance(err.value, OSError)  # nobody up the stack reads it as a file's problem
    with from_hub("a cached thing", "-"):  # offline, what is cached still loads
        value = 3
    assert value == 3


def test_a_reachable_hub_leaves_errors_as_they_are(monkeypatch):
    monkeypatch.setattr(hub_access, "_reachable", True)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="a real problem"):
        with from_hub("x", "y"):
            raise ValueError("a real problem")


def _duolm(args, env_dir):
    env = {**os.environ, "HF_ENDPOINT": CLOSED, "HF_HOME": str(env_dir / "hf")}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DUOLM_DEBUG"):
        env.pop(key, None)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "duolm", *args], capture_output=True, text=True, env=env,
                         cwd=env_dir, timeout=300)
    return run, time.perf_counter() - t0


# the libraries' own retries took 35 s and more before; a bound well under that, not a timing
@pytest.mark.parametrize("args, what", [
    (["train", "data=openwebtext-streaming", "trainer.max_steps=1"], "the stream openwebtext"),
    (["train", "data=wikitext103", "trainer.max_steps=1"], "the dataset wikitext (wikitext-103-raw-v1)"),
    (["sample", "eval.checkpoint_path=s-sahoo/duo"], "the model s-sahoo/duo"),
])
def test_a_command_that_needs_the_hub_offline_ends_in_one_sentence(tmp_path, args, what):
    own = [f"run.dir={tmp_path / 'run'}"] + ([f"data.cache_dir={tmp_path / 'cache'}"] if args[0] == "train" else [])
    run, seconds = _duolm(args + own, tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("duolm: error: the Hugging Face Hub could not be reached"), lines
    assert what in lines[0] and ("data.data_files=" in lines[0] or "its folder" in lines[0])
    assert "cache_dir" not in lines[0] and "bug" not in lines[0]
    assert seconds < 30, seconds
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.slow
def test_lm_eval_of_a_hub_task_offline_points_at_a_local_task(tmp_path):
    pytest.importorskip("lm_eval")
    run, seconds = _duolm(["lm-eval", "eval.checkpoint_path=builtin:duo-bigtxt-dcd", "lm_eval.tasks=[arc_easy]",
                           "lm_eval.limit=2"], tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip() and "duolm:" in line]
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(lines) == 1 and "Hugging Face Hub could not be reached" in lines[0] and "lm_eval.include_path" in lines[0]
    assert seconds < 30, seconds
