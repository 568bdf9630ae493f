"""`duolm rl` end to end on tiny models: the run folder it writes, a resumed run equal to an
uninterrupted one, TRL-style reward functions, held-out accuracy, and the refusals (one sentence,
before any work)."""
from __future__ import annotations

import json

import pytest
import torch

from duolm.app.cli import main
from duolm.checkpoints.loading import load_pretrained

SMALL = ["model.hidden_size=32", "model.cond_dim=16", "model.n_blocks=1", "model.n_heads=2", "model.length=56",
         "model.dropout=0.0", "trainer.enable_progress_bar=false", "data.task.train_size=40", "data.task.valid_size=8"]
RL = ["rl.steps=4", "rl.prompts_per_step=2", "rl.group=3", "rl.eval_every=2", "rl.valid_size=4", "rl.lr=1e-3",
      "sampling.steps=4", "sampling.noise_removal=ancestral", "trainer.enable_progress_bar=false"]
TASK = ["data=sudoku", "data.task.train_size=40", "data.task.valid_size=8"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A few SFT steps of Duo, MDLM, AR and MDLM in blocks of 8 (BD3-LM) on 4 x 4 sudoku (not a solver:
    RL's plumbing is what is tested)."""
    root = tmp_path_factory.mktemp("sft")
    out = {}
    for name, algo in (("duo_cpu", ["algo=duo_cpu"]), ("mdlm", ["algo=mdlm"]), ("ar", ["algo=ar"]),
                       ("mdlm_blocks", ["algo=mdlm", "algo.block_size=8"])):
        assert main(["train", "data=sudoku", *algo, "model=tiny", *SMALL, "trainer.max_steps=3",
                     "loader.global_batch_size=8", f"run.dir={root / name}", "run.final_validation=false",
                     "run.final_samples=false", "logging.csv=false"]) == 0
        out[name] = root / name / "model"
    return out


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("algo,estimator", [("duo_cpu", "elbo"), ("mdlm", "diffu_grpo"), ("ar", "auto"),
                                           ("mdlm_blocks", "auto")])
def test_rl_writes_its_run(sft, tmp_path, capsys, algo, estimator):
    run = tmp_path / "rl"
    assert main(["rl", f"eval.checkpoint_path={sft[algo]}", *TASK, *RL, f"rl.estimator={estimator}",
                 "rl.iterations=2", "rl.beta=0.1", "rl.reference_sync=2", f"run.dir={run}"]) == 0
    said = capsys.readouterr().out
    assert "held-out accuracy (4 prompts)" in said and "sudoku verifier" in said
    history = rows(run)
    trained = [r for r in history if "reward" in r]
    held = [r for r in history if "valid_accuracy" in r]
    assert [r["step"] for r in trained] == [1, 2, 3, 4]
    assert [r["step"] for r in held] == [0, 2, 4]  # the start, every rl.eval_every steps (the end among them)
    for r in trained:
        assert {"reward", "accuracy", "kl", "completion_length", "clipped", "loss"} <= set(r)
        assert 0 <= r["reward"] <= 1 and r["kl"] >= -1e-9 and 1 <= r["completion_length"] <= 56
    assert (run / "rl.png").stat().st_size > 1000
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 4 and len(report["valid_accuracy"]) == 3
    policy = load_pretrained(str(run / "model"))  # the policy is a model folder like any other
    assert policy.config["job"] == {"kind": "rl", "from": str(sft[algo].resolve())}


def test_a_resumed_rl_run_equals_an_uninterrupted_one(sft, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["rl", f"eval.checkpoint_path={sft['duo_cpu']}", *TASK, *RL, "rl.iterations=2", "rl.beta=0.1",
              "rl.reference_sync=3", "run.checkpoint_every=1"]
    assert main([*common, f"run.dir={whole}"]) == 0
    assert main([*common, f"run.dir={parts}", "rl.steps=2"]) == 0
    assert main([*common, f"run.dir={parts}"]) == 0  # the same command with more steps: resumes at step 2
    a = load_pretrained(str(whole / "model")).backbone.state_dict()
    b = load_pretrained(str(parts / "model")).backbone.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    ra, rb = rows(whole), rows(parts)
    assert [r["step"] for r in ra if "reward" in r] == [r["step"] for r in rb if "reward" in r] == [1, 2, 3, 4]
    for x, y in zip([r for r in ra if "reward" in r], [r for r in rb if "reward" in r]):
        assert x["reward"] == y["reward"] and x["example"] == y["example"]
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


def test_reward_functions_get_trl_arguments(sft, tmp_path, monkeypatch):
    """A reward written for TRL's GRPOTrainer (prompts, completions, **columns) drives the run; the
    records' other fields arrive as lists; accuracy is the summed reward reaching the threshold."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(
        "seen = []\n"
        "def starts_with_target(prompts, completions, target, **kw):\n"
        "    seen.append((len(prompts), len(target)))\n"
        "    return [1.0 if c.startswith(t) else 0.0 for c, t in zip(completions, target)]\n"
        "def length_bonus(prompts, completions, **kw):\n"
        "    return [min(len(c), 4) / 8 for c in completions]\n")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"sudoku 4x4: {i}", "target": "1"}) + "\n"
                                                   for i in range(6)))
    run = tmp_path / "run"
    assert main(["rl", f"eval.checkpoint_path={sft['duo_cpu']}", "rl.prompts=prompts.jsonl",
                 "rl.reward=[my_rewards:starts_with_target,my_rewards:length_bonus]", "rl.accuracy_threshold=1.5",
                 *RL, f"run.dir={run}"]) == 0
    import my_rewards
    assert my_rewards.seen and all(p == t == 6 for p, t in my_rewards.seen)  # 2 prompts x 3 completions
    trained = [r for r in rows(run) if "reward" in r]
    assert len(trained) == 4 and all(0 <= r["reward"] <= 1.5 for r in trained)
    assert not any("valid_accuracy" in r for r in rows(run))  # a prompts file has no held-out split unless given
    # the completions' lengths differ within groups, so the advantages do too: the saved policy moved
    moved = sum(float((a - b).abs().sum()) for a, b in zip(
        load_pretrained(str(run / "model")).backbone.state_dict().values(),
        load_pretrained(str(sft["duo_cpu"])).backbone.state_dict().values()))
    assert moved > 0


def test_a_reward_function_scores_every_completion():
    from duolm.app.rewards import RewardSet
    records = [{"prompt": "a", "answer": "x"}, {"prompt": "b", "answer": "y"}]
    fn = lambda prompts, completions, answer: [float(c == a) for c, a in zip(completions, answer)]  # noqa: E731
    reward, correct = RewardSet(None, [fn, fn], ["f", "f"], accuracy_threshold=2.0)(records, ["x", "z"])
    assert reward.tolist() == [2.0, 0.0] and correct.tolist() == [True, False]
    with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
        RewardSet(None, [lambda prompts, completions, **k: [1.0]], ["short"])(records, ["x", "z"])


@pytest.mark.parametrize("extra,needle", [
    (["rl.group=1"], "rl.group must be >= 2"),
    (["rl.estimator=diffu_grpo", "+blocks"], "a block model (algo.block_size=8) scores its completions by elbo"),
    (["rl.estimator=exact"], "rl.estimator=exact needs an exact likelihood"),
    (["rl.estimator=diffu_grpo"], "rl.estimator=diffu_grpo masks the completion"),
    (["rl.reward=nowhere_module:f"], "rl.reward: cannot import 'nowhere_module'"),
    (["rl.reward=justaname"], "is not module:function"),
    (["rl.prompts=/nonexistent/p.jsonl", "rl.reward=math:sqrt"], "rl.prompts: /nonexistent/p.jsonl does not exist"),
    (["rl.prompts_per_step=3", "trainer.devices=2"], "must be a multiple of the number of devices"),
])
def test_rl_refusals_are_one_sentence(sft, tmp_path, capsys, extra, needle):
    model = sft["mdlm_blocks" if "+blocks" in extra else "duo_cpu"]
    code = main(["rl", f"eval.checkpoint_path={model}", *TASK, *RL, f"run.dir={tmp_path / 'r'}",
                 *[e for e in extra if e != "+blocks"]])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_rl_never_writes_into_the_policy_run(sft, tmp_path, capsys):
    code = main(["rl", f"eval.checkpoint_path={sft['duo_cpu']}", *TASK, *RL,
                 f"run.dir={sft['duo_cpu'].parent}"])
    assert code == 1 and "is the policy's own run" in capsys.readouterr().err


def test_rl_needs_prompts(sft, tmp_path, capsys):
    code = main(["rl", f"eval.checkpoint_path={sft['duo_cpu']}", *RL, f"run.dir={tmp_path / 'r'}"])
    assert code == 1 and "duolm rl needs prompts" in capsys.readouterr().err


def test_verified_accuracy_counts_right_answers():
    """verified_accuracy with an oracle 'model' that always answers the record's response (AR over a
    lookup): accuracy 1; against a wrong verifier 0; the standard error is the binomial one."""
    from duolm.data.tasks import TASKS, task_splits
    from duolm.data.tokenizers import load_tokenizer
    from duolm.evaluation.verified import verified_accuracy
    from duolm.rl import groups as groups_module

    tok = load_tokenizer("puzzle")
    _, valid = task_splits("arithmetic", {"train_size": 20, "valid_size": 10})
    answers = {r["prompt"]: r["response"] for r in valid}

    def fake_sample_groups(method, backbone, prompts, group, length, spec, *, bos_id, eos_id, generator, device):
        seqs, comp = [], []
        for ids in prompts:
            text = answers[tok.decode(ids[1:])]
            row = ids + tok.encode(text) + [eos_id]
            seqs.append(row + [eos_id] * (length - len(row)))
            comp.append([False] * len(ids) + [True] * (len(row) - len(ids)) + [False] * (length - len(row)))
        return groups_module.Groups(torch.tensor(seqs), ~torch.tensor(comp), torch.tensor(comp), 1)

    import duolm.evaluation.verified as verified
    original = verified.sample_groups
    verified.sample_groups = fake_sample_groups
    try:
        right = verified_accuracy(None, None, tok, valid, TASKS["arithmetic"].verify, None, length=24, batch_size=4)
        wrong = verified_accuracy(None, None, tok, valid, lambda r, c: 0.0, None, length=24)
    finally:
        verified.sample_groups = original
    assert right["accuracy"] == 1.0 and right["n"] == len(valid) and right["se"] == 0.0
    assert wrong["accuracy"] == 0.0


def test_rl_on_a_diffusion_gemma_folder(tmp_path, monkeypatch):
    """A transformers DiffusionGemma folder as the policy: groups drawn canvas by canvas with the
    EB-sampler, log-probabilities by the canvas ELBO; the policy is written in transformers' format,
    and nothing is written into the folder it started from."""
    from diffusion_gemma_tiny import tiny_folder
    from transformers import DiffusionGemmaForBlockDiffusion

    folder = tiny_folder(tmp_path / "dg")
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w7.py").write_text("def count_w7(prompts, completions, **kw):\n"
                                    "    return [c.split().count('w7') / 4 for c in completions]\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"w{5 + i} w{6 + i}"}) + "\n" for i in range(4)))
    run = tmp_path / "run"
    assert main(["rl", f"eval.checkpoint_path={folder}", "rl.prompts=p.jsonl", "rl.reward=w7:count_w7",
                 "rl.steps=2", "rl.prompts_per_step=2", "rl.group=2", "rl.beta=0.1", "rl.lr=1e-3",
                 "sampling.predictor=entropy_bound", "sampling.steps=4", "trainer.enable_progress_bar=false",
                 f"run.dir={run}"]) == 0
    trained = [r for r in rows(run) if "reward" in r]
    assert [r["step"] for r in trained] == [1, 2] and all(r["completion_length"] >= 1 for r in trained)
    assert DiffusionGemmaForBlockDiffusion.from_pretrained(run / "model") is not None
    assert sorted(p.name for p in folder.iterdir()) == before
