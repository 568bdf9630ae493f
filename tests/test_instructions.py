"""Supervised fine-tuning on instruction records: the store knows each prompt, the prompt is never
noised and carries no loss (a gradient check, for every diffusion method and both curricula), the
validation NELBO is the response's given its prompt, and a run trains, scores and answers from the
command line on a tiny Llama with SmolLM2's tokenizer and chat template (offline)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from duolm.app.fields import config_message
from duolm.contracts import Capabilities
from duolm.core.methods import build_method
from duolm.data.instructions import chat_prompt, prompt_ids, reply_ids
from duolm.data.pipeline import build_splits
from duolm.data.tokenizers import CharTokenizer, load_tokenizer

PAIRS = [{"prompt": f"question {i} ", "response": "answer " * (i % 3 + 1)} for i in range(9)]


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def smollm2():
    return load_tokenizer("smollm2")


@pytest.mark.parametrize("mode", ["pad", "pack"])
def test_the_store_marks_each_prompt_and_scores_the_response_and_its_end(tmp_path, mode):
    tok = CharTokenizer()
    splits = build_splits("local", tok, 40, mode, None, 1, path=str(_write(tmp_path / "sft.jsonl", PAIRS)),
                          valid_fraction=0.34)
    train, valid = splits["train"], splits["valid"]
    assert train.has_prompts and train.meta["n_docs"] == 6 and valid.meta["n_docs"] == 3
    ids, scored, clean = train.blocks_with_prompts(0, len(train))
    assert not (scored & clean).any() and train.meta["n_prompt_tokens"] == int(clean.sum())
    records = [r for i, r in enumerate(PAIRS) if i % 3 != 2]  # every 3rd record is held out
    found = 0
    for row in range(len(ids)):
        x, c, v = ids[row].tolist(), clean[row].tolist(), scored[row].tolist()
        start = 0
        while start < len(x) and c[start]:  # a record: [BOS] prompt (clean) response [EOS] (scored)
            rec = records[found]
            p = 1 + len(tok.encode(rec["prompt"]))
            r = tok.encode(rec["response"])
            assert x[start] == tok.bos_id and all(c[start:start + p]) and not any(v[start:start + p])
            assert x[start + 1:start + p] == tok.encode(rec["prompt"])
            assert x[start + p:start + p + len(r)] == r and x[start + p + len(r)] == tok.eos_id
            assert all(v[start + p:start + p + len(r) + 1]) and not any(c[start + p:start + p + len(r) + 1])
            start += p + len(r) + 1
            found += 1
        # the rest of the block: EOS, scored (the model learns where a response stops)
        assert set(x[start:]) <= {tok.eos_id} and all(v[start:]) and not any(c[start:])
    assert found == len(records)
    if mode == "pad":
        assert len(train) == len(records)
    else:
        assert len(train) < len(records)  # several records to a block


def test_the_response_alone_is_reported_beside_the_padded_figure(tmp_path):
    """For instruction records the NELBO scores each response and the EOS padding of its block; the
    responses alone (up to their first EOS) are reported beside it. With AR both are exact, so each
    equals the sum of next-token NLLs over its own positions."""
    from duolm.core.methods import build_method
    from duolm.evaluation import evaluate_nelbo
    from duolm.models.dit import DiT, DiTConfig

    tok = CharTokenizer()
    valid = build_splits("local", tok, 40, "pad", None, 1, path=str(_write(tmp_path / "sft.jsonl", PAIRS)),
                         valid_fraction=0.34)["valid"]
    method = build_method("ar", tok.vocab_size)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=tok.vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0,
                        causal=True))
    for q in net.parameters():
        torch.nn.init.normal_(q, std=0.2)
    ev = evaluate_nelbo(method, net, valid, batch_size=2, eos_id=tok.eos_id)
    x0, scored, clean = valid.blocks_with_prompts(0, len(valid))
    with torch.no_grad():
        nll = -net(x0[:, :-1]).double().log_softmax(-1).gather(-1, x0[:, 1:, None])[..., 0]  # position i + 1's
    ends = (x0 == tok.eos_id) & scored
    response = (scored & ((ends.long().cumsum(1) - ends.long()) == 0))[:, 1:]
    assert ev["tokens"] == int(scored.sum()) and ev["response_tokens"] == int(response.sum()) < ev["tokens"]
    assert abs(ev["nll"] - float((nll * scored[:, 1:]).sum() / scored.sum())) < 1e-5
    assert abs(ev["response_nll"] - float((nll * response).sum() / response.sum())) < 1e-5
    assert ev["scored"] == "each response and the EOS padding of its block, given its prompt"


def test_chat_records_use_the_template_and_the_prompt_has_one_bos(tmp_path, smollm2):
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    rows = [{"messages": messages}] * 3
    splits = build_splits("local", smollm2, 96, "pad", None, 1, path=str(_write(tmp_path / "chat.jsonl", rows)))
    ids, scored, clean = splits["train"].blocks_with_prompts(0, 1)
    held = prompt_ids(smollm2, messages=messages[:1])
    # [BOS] + the rendered prompt is the chat template's own ids (SmolLM2's opens with its BOS)
    assert held == list(smollm2.tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True,
                                                        return_dict=False))
    n = int(clean[0].sum())
    assert ids[0, :n].tolist() == held and bool(clean[0, :n].all())
    reply = smollm2.encode("Blue.")
    assert ids[0, n:n + len(reply)].tolist() == reply and ids[0, n + len(reply)] == smollm2.eos_id
    assert reply_ids(smollm2, ids[0].tolist(), n) == reply
    assert chat_prompt(smollm2, messages[:1]).endswith("<|im_start|>assistant\n")


def test_records_whose_prompt_leaves_no_room_are_dropped_and_counted(tmp_path):
    rows = [{"prompt": "x" * 30, "response": "y"}] + PAIRS
    splits = build_splits("local", CharTokenizer(), 24, "pad", None, 1, path=str(_write(tmp_path / "s.jsonl", rows)),
                          valid_fraction=0.5)
    assert splits["valid"].meta["n_dropped"] + splits["train"].meta["n_dropped"] == 1


@pytest.mark.parametrize("rows, fmt, match", [
    ([{"prompt": "a", "response": "b"}] * 3, "jsonl-wrap", "data.blocks=pad or pack"),
    ([{"prompt": "a"}, {"prompt": "b", "response": "c"}], "instructions", r"s.jsonl:1: an instruction record needs"),
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 2, "instructions", "must be the assistant's"),
    ([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}] * 2, "instructions",
     "'role' and a 'content'"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}] * 2, "instructions",
     "chat template"),
    ([{"prompt": "a", "response": "b"}], "instructions", "one instruction record cannot be split"),
])
def test_bad_instruction_data_is_one_sentence(tmp_path, rows, fmt, match):
    path = _write(tmp_path / "s.jsonl", rows)
    mode = "wrap" if fmt == "jsonl-wrap" else "pad"
    with pytest.raises(ValueError) as info:
        build_splits("local", CharTokenizer(), 32, mode, None, 1, path=str(path), format="instructions")
    said = config_message(info.value)  # the sentence a user of the command reads
    assert re.search(match, said), said


class Recorder(torch.nn.Module):
    """A backbone that records its input and returns logits with a gradient (B, L, K)."""

    capabilities = Capabilities(soft_inputs=True)

    def __init__(self, vocab: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))
        self.seen, self.logits = None, None

    def forward(self, x, sigma=None, weights=None):
        self.seen = x
        if x.dtype.is_floating_point:  # soft inputs (the curriculum): probabilities over the vocabulary
            probs = x.softmax(-1) if weights is None else x
            emb = probs @ self.table
        elif weights is not None:      # top-k ids and their weights
            emb = (self.table[x] * weights[..., None]).sum(-2)
        else:
            emb = self.table[x]
        self.logits = emb + 0.0
        self.logits.retain_grad()
        return self.logits


@pytest.mark.parametrize("algo, curriculum", [("mdlm", None), ("duo_base", None), ("sedd", None),
                                               ("duo_base", "dense"), ("duo_base", "topk"), ("ar", None)])
def test_the_prompt_is_never_noised_and_carries_no_loss(algo, curriculum):
    K, B, L = 12, 4, 10
    method = build_method(algo, K, fused=False)
    net = Recorder(method.model_vocab_size)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, K, (B, L), generator=g)
    clean = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate((1, 3, 5, 7)):
        clean[b, :n] = True
    valid = ~clean
    t = torch.full((B,), 0.999)  # almost everything else is noised
    if curriculum is None:
        out = method.token_loss(net, x0, valid, t=t, generator=g, clean=clean)
    else:
        from duolm.training.curriculum import Curriculum, CurriculumSchedule

        sched = CurriculumSchedule(mode="simple" if curriculum == "dense" else "poly3", start=0, end=100,
                                   top_k=-1 if curriculum == "dense" else 3)
        out = Curriculum(sched, K).token_loss(method, net, x0, valid, step=0, t=torch.full((B,), 0.9), generator=g,
                                              clean=clean)
    (out.nll * out.weight).sum().backward()
    grad = net.logits.grad
    if algo == "ar":  # position i predicts token i + 1: the prompt's targets carry no loss
        assert torch.equal(net.seen, x0[:, :-1])
        assert grad[clean[:, 1:]].abs().max() == 0 and grad[~clean[:, 1:]].abs().max() > 0
        return
    seen = net.seen
    if seen.dtype.is_floating_point:  # soft inputs: the clean token's one-hot
        seen = seen.argmax(-1) if seen.shape[-1] == method.model_vocab_size else seen
    elif seen.dim() == 3:  # top-k ids: the first carries all the weight
        seen = seen[..., 0]
    assert torch.equal(seen[clean], x0[clean])
    assert (seen[~clean] != x0[~clean]).any()  # the response is noised
    assert grad[clean].abs().max() == 0 and grad[~clean].abs().max() > 0


def _tiny_base(folder, tok):
    """A 1-layer Llama in SmolLM2's vocabulary, saved with SmolLM2's tokenizer: a pretrained
    folder that model.pretrained and data.tokenizer both read."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=128, bos_token_id=tok.bos_id,
                                        eos_token_id=tok.eos_id, tie_word_embeddings=True))
    base.save_pretrained(folder)
    tok.tok.save_pretrained(folder)
    return folder


def test_sft_trains_scores_the_response_and_answers_from_the_command_line(tmp_path, smollm2, monkeypatch):
    """train (model=hf, chat records) -> eval (the response NELBO) -> lm-eval -> sample with
    sampling.chat -> Model.chat, on a 1-layer Llama with SmolLM2's tokenizer."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    from duolm.app.api import load
    from duolm.app.cli import main

    base = _tiny_base(tmp_path / "tiny-base", smollm2)
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                          {"role": "assistant", "content": f"{i + 1}."}]} for i in range(12)]
    data = _write(tmp_path / "chat.jsonl", rows)
    run = tmp_path / "run"
    common = ["data=local", f"data.path={data}", "data.blocks=pad", f"data.tokenizer={base}",
              f"data.cache_dir={tmp_path / 'cache'}", "model.length=64"]
    assert main(["train", "model=hf", f"model.pretrained={base}", "algo=mdlm", *common, "trainer.max_steps=2",
                 "loader.global_batch_size=4", "loader.eval_batch_size=4", f"run.dir={run}",
                 "trainer.enable_progress_bar=false", "training.ema=0"]) == 0
    assert main(["eval", f"eval.checkpoint_path={run / 'model'}", *common, "eval.output=" + str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    valid = build_splits("local", load_tokenizer(str(base)), 64, "pad", str(tmp_path / "cache"), 1,
                         path=str(data))["valid"]
    _, scored, clean = valid.blocks_with_prompts(0, len(valid))
    # the response's NELBO: only the positions after each prompt are scored
    assert math.isfinite(report["nll"]) and report["tokens"] == int(scored.sum()) == scored.numel() - int(clean.sum())
    assert 0 < report["response_tokens"] < report["tokens"] and math.isfinite(report["response_nll"])
    assert int(clean.sum()) >= 30 * len(valid)  # SmolLM2's template: 30-odd prompt tokens a record
    # lm-evaluation-harness on the same model: a local multiple-choice task (offline)
    pytest.importorskip("lm_eval")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text("\n".join(json.dumps({"context": f"What is {i} plus one?", "choices":
                                                           [f" {i + 1}.", " blue."], "label": 0}) for i in range(3)))
    (tasks / "sums.yaml").write_text(f"task: sft_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                     f"    test: {tasks / 'items.jsonl'}\ntest_split: test\n"
                                     f"output_type: multiple_choice\ndoc_to_text: \"{{{{context}}}}\"\n"
                                     f"doc_to_choice: \"{{{{choices}}}}\"\ndoc_to_target: \"{{{{label}}}}\"\n"
                                     f"metric_list:\n  - metric: acc\n")
    harness = tmp_path / "lm_eval.json"
    assert main(["lm-eval", f"eval.checkpoint_path={run / 'model'}", f"lm_eval.include_path={tasks}",
                 "lm_eval.tasks=[sft_sums]", "lm_eval.num_mc_samples=2", f"lm_eval.output={harness}"]) == 0
    assert 0 <= json.loads(harness.read_text())["results"]["sft_sums"]["acc,none"] <= 1
    out = tmp_path / "s.json"
    assert main(["sample", f"eval.checkpoint_path={run / 'model'}", "sampling.chat=What is 3 plus one?",
                 "sampling.steps=4", "sampling.num_samples=2", f"sampling.output={out}"]) == 0
    samples = json.loads(out.read_text())["samples"]
    held = prompt_ids(smollm2, messages=[{"role": "user", "content": "What is 3 plus one?"}])
    for smp in samples:
        assert smp["ids"][:len(held)] == held  # the conversation held clean
        assert smp["reply"] == smollm2.decode(reply_ids(smollm2, smp["ids"], len(held)))
    m = load(str(run / "model"))
    replies = m.chat([{"role": "user", "content": "What is 3 plus one?"}], n=2, steps=4)
    assert len(replies.texts) == 2


def test_a_resumed_lora_sft_run_ends_where_the_uninterrupted_one_does(tmp_path, smollm2):
    """LoRA adapters, the annealed mask (drawn from the step) and the prompt masks through a
    checkpoint: 3 + 3 steps give the adapters 6 straight steps give."""
    from safetensors.torch import load_file

    from duolm.app.cli import main

    base = _tiny_base(tmp_path / "tiny-base", smollm2)
    data = _write(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}: ", "response": f"{i} {i} {i}"} for i in range(16)])

    def run(folder, steps):
        assert main(["train", "model=hf", f"model.pretrained={base}", "algo=mdlm", "model.lora.r=4",
                     "model.anneal_steps=4", "data=local", f"data.path={data}", "data.blocks=pack",
                     f"data.tokenizer={base}", f"data.cache_dir={tmp_path / 'cache'}", "model.length=32",
                     f"trainer.max_steps={steps}", "loader.global_batch_size=2", "trainer.val_check_interval=100",
                     "trainer.limit_val_batches=1", f"run.dir={folder}", "trainer.enable_progress_bar=false",
                     "training.ema=0", "optim.lr=1e-2", "optim.warmup_steps=0"]) == 0
        return load_file(folder / "model" / "model.safetensors")

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6)
    assert set(straight) == set(resumed) and all("lora_" in k for k in straight)
    for k in straight:
        torch.testing.assert_close(straight[k], resumed[k], rtol=0, atol=1e-6, msg=k)
    assert any(straight[k].abs().max() > 0 for k in straight if "lora_B" in k)  # the adapters moved
