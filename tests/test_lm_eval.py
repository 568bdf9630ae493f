"""The lm-evaluation-harness adapter, offline: a YAML task reading a local JSONL file."""
import json
import time

import pytest

lm_eval = pytest.importorskip("lm_eval")  # the test extra installs it

import duolm  # noqa: E402
from duolm.app.cli import main  # noqa: E402
from duolm.app.lm_eval_adapter import DuolmLM  # noqa: E402
from duolm.evaluation.likelihood import continuation_nelbo  # noqa: E402

# real phrases against strings of rare letters of the same length: the built-in character model (2M
# parameters, distilled; 3.7 bits/char) should prefer the first; anagrams are too hard for it
ITEMS = [("the old man", [" and the sea", " qzx vkw jjq"]), ("once upon a", [" time there was", " zqxj kvvqz wjx"]),
         ("it was the best of", [" times it was", " qxjzv kq wzx"]), ("the quick brown", [" fox jumps", " vqz jxkwz"]),
         ("she opened the", [" door and", " zqxk vjw"]), ("he said that the", [" house was", " qjzxv kwq"]),
         ("in the middle of the", [" night", " zqxjv"]), ("they went to the", [" river", " kqzxj"])]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    rows = [{"context": c, "choices": ch, "label": 0} for c, ch in ITEMS]
    (d / "phrases.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "duolm_phrases.yaml").write_text(f"""task: duolm_phrases
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'phrases.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return d


@pytest.fixture(scope="module")
def adapter():
    return DuolmLM(duolm.load("builtin:duo-bigtxt-dcd", device="cpu"), num_mc_samples=8, seed=3)


class Request:  # what lm-eval hands a model: an Instance with .args
    def __init__(self, *args):
        self.args = args


def test_the_adapter_gives_duolms_own_nelbo_for_the_same_strings_and_seed(adapter):
    reqs = [Request(c, ch[0]) for c, ch in ITEMS[:3]]
    got = adapter.loglikelihood(reqs)
    m = adapter.model
    tok = m.tokenizer
    pairs = [([tok.bos_id] + tok.encode_fragment(c), tok.encode_fragment(ch[0])) for c, ch in ITEMS[:3]]
    own = continuation_nelbo(m.method, m.pretrained.backbone, pairs, length=m.length, pad_id=tok.pad_id,
                             num_samples=8, seed=3)
    assert [ll for ll, _ in got] == [-r["nelbo"] for r in own]
    assert all(isinstance(g, bool) for _, g in got) and len(adapter.last_standard_errors) == 3
    rolling = adapter.loglikelihood_rolling([Request("the old man and the sea")])
    assert rolling == [-s.nelbo for s in m.nelbo(["the old man and the sea"], num_mc_samples=8, seed=3)]


def test_generation_stops_at_the_stop_string_and_goes_past_the_window(adapter):
    out = adapter.generate_until([Request("the old man", {"until": ["e"], "max_gen_toks": 30}),
                                  Request("the old man", {"until": [], "max_gen_toks": 200})])
    assert "e" not in out[0] and len(out[0]) <= 30
    assert len(out[1]) > 100  # semi-autoregressive windows past the model's 128


def test_a_task_from_a_local_jsonl_runs_through_the_harness(task_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "lm_eval.json"
    t0 = time.perf_counter()
    assert main(["lm-eval", "eval.checkpoint_path=builtin:duo-bigtxt-dcd", f"lm_eval.include_path={task_dir}",
                 "lm_eval.tasks=[duolm_phrases]", "lm_eval.num_mc_samples=32", f"lm_eval.output={out}",
                 f"run.dir={tmp_path}"]) == 0
    seconds = time.perf_counter() - t0
    res = json.loads(out.read_text())
    acc = res["results"]["duolm_phrases"]["acc,none"]
    print(f"duolm_phrases accuracy {acc:.3f} in {seconds:.1f} s")
    assert acc >= 0.875  # 8 real phrases against rare-letter strings (chance: 0.5)
    assert "duolm_phrases" in capsys.readouterr().out


def test_what_the_harness_cannot_get_is_one_sentence(task_dir, capsys):
    assert main(["lm-eval", "eval.checkpoint_path=builtin:duo-bigtxt-dcd", "lm_eval.tasks=[no_such_task]",
                 f"lm_eval.include_path={task_dir}"]) == 1
    assert "'no_such_task' is not a task lm-eval knows" in capsys.readouterr().err
    assert main(["lm-eval", "eval.checkpoint_path=builtin:duo-bigtxt-dcd"]) == 1
    assert "needs lm_eval.tasks" in capsys.readouterr().err
    no_semi = DuolmLM(duolm.load("builtin:duo-bigtxt-dcd", device="cpu"), semi_ar=False)
    with pytest.raises(ValueError, match="more than the model's length 128; pass semi_ar=true"):
        no_semi.generate_until([Request("the old man", {"until": [], "max_gen_toks": 200})])


def test_an_ar_model_gives_its_exact_log_likelihood_and_greedy_flag():
    import torch

    from duolm.app.api import Model
    from duolm.checkpoints.loading import Pretrained
    from duolm.core.methods import build_method
    from duolm.data.tokenizers import CharTokenizer
    from duolm.models.dit import DiT, DiTConfig

    tok = CharTokenizer()
    method = build_method("ar", tok.vocab_size)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=tok.vocab_size + 1, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2,
                        dropout=0.0, causal=True)).eval()
    with torch.no_grad():
        net.output_layer.linear.weight.normal_(0, 1.0)
    lm = DuolmLM(Model(Pretrained(net, method, tok, {"length": 32}), device="cpu"))
    (ll, greedy), = lm.loglikelihood([Request("ab c", " dd")])
    ids = [tok.bos_id] + tok.encode_fragment("ab c") + tok.encode_fragment(" dd")
    with torch.no_grad():
        logp = net(torch.tensor([ids[:-1]]), None)[0, :, :tok.vocab_size].log_softmax(-1)
    targets = ids[-3:]
    exact = sum(float(logp[len(ids) - 4 + k, t]) for k, t in enumerate(targets))
    assert abs(ll - exact) < 1e-4
    assert greedy == ([int(logp[len(ids) - 4 + k].argmax()) for k in range(3)] == targets)
    best = ids[:-3]  # greedy decoding of three tokens is flagged greedy
    with torch.no_grad():
        for _ in range(3):
            best = best + [int(net(torch.tensor([best]), None)[0, -1, :tok.vocab_size].argmax())]
    assert lm._greedy([(ids[:-3], best[-3:])]) == [True]


def test_lm_evals_own_command_line_runs_the_duolm_model(task_dir, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "duolm.app.lm_eval_adapter", "--model", "duolm",
                          "--model_args", "pretrained=builtin:duo-bigtxt-dcd,num_mc_samples=8", "--tasks",
                          "duolm_phrases", "--include_path", str(task_dir)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "|duolm_phrases|" in run.stdout
