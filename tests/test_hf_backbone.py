"""A pretrained Hugging Face causal LM as a duolm backbone (duolm.models.hf_lm), on tiny random
Llama and GPT-2 models built here (no download): bidirectional attention, the mask row that leaves
every other logit unchanged, the chunked loss through its head, block diffusion's masks, soft
inputs, time conditioning that starts as the identity, and a save -> load round trip."""
from __future__ import annotations

import math

import pytest
import torch
from said_as import raises_said_as

from duolm.checkpoints.duolm_format import from_pretrained, save_pretrained
from duolm.core.methods import build_method
from duolm.models.backbones import build_backbone
from duolm.models.hf_lm import HFLM, HFConfig
from duolm.sampling.observers import Recorder

V = 40  # the base's vocabulary


def _base(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":  # untied head, rotary positions, grouped-query attention
        base = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                            eos_token_id=1, pad_token_id=None, tie_word_embeddings=False))
    elif kind == "qwen2":  # biased q/k/v projections, tied head
        from transformers import Qwen2Config, Qwen2ForCausalLM

        base = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                            eos_token_id=1, tie_word_embeddings=True))
    else:  # tied head, learned positions
        base = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=1))
    return base.eval()


def _wrapped(kind: str, vocab: int, **kw) -> tuple[HFLM, torch.nn.Module]:
    base = _base(kind)
    net = HFLM(HFConfig(vocab_size=vocab, hf_config=base.config.to_dict(), pretrained=f"tiny-{kind}", **kw))
    net.load_base_weights(base.state_dict())
    return net.eval(), base


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_attention_is_bidirectional_and_causal_only_for_ar(kind):
    x = torch.randint(2, V, (2, 10), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % V
    for causal in (False, True):
        net, _ = _wrapped(kind, V + 1, causal=causal)
        with torch.no_grad():
            moved = (net(x)[:, 0] - net(y)[:, 0]).abs().max()
        assert (moved > 1e-6) == (not causal), (causal, float(moved))


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_the_mask_row_keeps_every_other_logit_and_starts_at_the_mean(kind):
    net, base = _wrapped(kind, V + 1, causal=True)  # causal: comparable with the base's own forward
    x = torch.randint(2, V, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[..., :V], base(input_ids=x).logits, atol=1e-5, rtol=0)
    emb = net.lm.get_input_embeddings().weight
    torch.testing.assert_close(emb[V], base.get_input_embeddings().weight.mean(0))
    assert net.tied == (kind != "llama")
    if not net.tied:
        torch.testing.assert_close(net.lm.get_output_embeddings().weight[V], base.get_output_embeddings().weight.mean(0))


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_chunked_loss_runs_through_its_head_tied_or_not(algo, kind):
    method = build_method(algo, V, loss_dtype=torch.float64)
    plain = build_method(algo, V, loss_dtype=torch.float64, fused=False)
    net, _ = _wrapped(kind, method.model_vocab_size)
    x0 = torch.randint(2, V, (3, 12), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.2, 0.5, 0.9])
    a = method.token_loss(net, x0, t=t, generator=torch.Generator().manual_seed(0)).nll
    b = plain.token_loss(net, x0, t=t, generator=torch.Generator().manual_seed(0)).nll
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_block_diffusion_masks_reach_the_pretrained_attention():
    """With algo.block_size the training pass's mask is the pretrained model's: an earlier block's
    loss does not see a later block's tokens."""
    method = build_method("mdlm", V, block_size=4, loss_dtype=torch.float64)
    net, _ = _wrapped("llama", method.model_vocab_size)
    x0 = torch.randint(2, V, (2, 12), generator=torch.Generator().manual_seed(4))
    later = x0.clone()
    later[:, 8:] = (later[:, 8:] + 1) % V
    t = torch.full((2, 3), 0.6, dtype=torch.float64)
    a = method.token_loss(net, x0, t=t, generator=torch.Generator().manual_seed(0)).nll
    b = method.token_loss(net, later, t=t, generator=torch.Generator().manual_seed(0)).nll
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_soft_inputs_and_time_conditioning_start_where_the_ids_do():
    net, _ = _wrapped("gpt2", V + 1, time_conditioning=True)
    x = torch.randint(2, V, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ids = net(x, torch.tensor([0.3, 2.0]))
        soft = net(torch.nn.functional.one_hot(x, V + 1).float(), torch.tensor([0.3, 2.0]))
        plain, _ = _wrapped("gpt2", V + 1)
        torch.testing.assert_close(soft, ids, atol=1e-5, rtol=0)
        torch.testing.assert_close(ids, plain(x), atol=1e-5, rtol=0)  # the zero projection: sigma adds nothing yet


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_save_and_load_give_identical_logits(kind, tmp_path):
    from duolm.data.tokenizers import CharTokenizer

    tok = CharTokenizer("".join(chr(ord("a") + i) for i in range(V - 1)))  # V tokens with the separator
    method = build_method("mdlm", tok.vocab_size)
    net, _ = _wrapped(kind, method.model_vocab_size)
    out = save_pretrained(tmp_path / "m", net, algo={"name": "mdlm", "T": 0, "time_conditioning": False},
                          noise={"type": "log-linear", "eps": 1e-3}, tokenizer=tok, length=16)
    again = from_pretrained(out)
    assert isinstance(again.backbone, HFLM) and again.backbone.tied == net.tied
    x = torch.randint(0, V + 1, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(again.backbone(x), net(x), atol=0, rtol=0)
    assert isinstance(build_backbone(net.config.to_dict()), HFLM)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_block_sampling_with_the_key_value_cache_equals_the_cache_free_pass(kind):
    """model=hf keeps transformers' DynamicCache for block diffusion: a block attends to the cached
    clean blocks and to itself (the noisy block's keys cropped off after each call, a committed
    block's kept), so its logits are the block-causal pass's over the whole prefix (float64, to
    1e-10) and the draws are the same draw for draw, at the cost of one block per call."""
    from duolm.sampling import SamplerSpec
    from duolm.sampling.blocks import CachedBlock, UncachedBlock, block_sample, commit_block

    method = build_method("mdlm", V, block_size=4)
    net, _ = _wrapped(kind, method.model_vocab_size)
    net.double()
    prefix = torch.randint(2, V, (2, 8), generator=torch.Generator().manual_seed(4))
    cache = net.new_cache()
    for b in range(2):
        commit_block(net, cache, prefix[:, 4 * b:4 * b + 4], 4 * b)
    noisy = torch.randint(0, method.model_vocab_size, (2, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for _ in range(2):  # a second call sees the same cache: the first call's keys were cropped off
            cached = CachedBlock(net, cache, 8)(noisy, torch.zeros(2, dtype=torch.float64))
            torch.testing.assert_close(cached, UncachedBlock(net, prefix, 4)(noisy, torch.zeros(2, dtype=torch.float64)),
                                       atol=1e-10, rtol=0)
    assert len(cache) == 8
    recorder = Recorder()
    st = recorder.counts
    spec = SamplerSpec("ancestral", steps=3)
    x = block_sample(method, net, spec, 2, 12, generator=torch.Generator().manual_seed(0), observer=recorder)
    y = block_sample(method, net, spec, 2, 12, generator=torch.Generator().manual_seed(0), cache=False)
    assert torch.equal(x, y) and (x != method.mask_id).all() and st["commit_calls"] == 3


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_ar_sampling_on_a_pretrained_backbone_uses_the_cache_and_stays_causal(kind):
    """algo=ar on model=hf: the sampler feeds the prompt (causally) and then one token a call
    against transformers' cache; the draws equal the cache-free causal passes' (float64)."""
    from duolm.sampling.ar import ar_sample

    net, _ = _wrapped(kind, V, causal=True)
    net.double()
    prompt = [0, 5, 9, 3]
    a = ar_sample(net, 3, 14, 0, generator=torch.Generator().manual_seed(1), prompt=prompt)
    b = ar_sample(net, 3, 14, 0, generator=torch.Generator().manual_seed(1), prompt=prompt, use_cache=False)
    assert torch.equal(a, b) and a[:, :4].eq(torch.tensor(prompt)).all()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lora_trains_only_adapters_saves_them_alone_and_merges_to_the_same_logits(kind, tmp_path, monkeypatch):
    from duolm.data.tokenizers import CharTokenizer
    from duolm.models import hf_lm

    base = _base(kind)
    monkeypatch.setattr(hf_lm, "base_state_dict", lambda spec: base.state_dict())  # the pointer's weights
    method = build_method("mdlm", V)
    net = HFLM(HFConfig(vocab_size=method.model_vocab_size, hf_config=base.config.to_dict(), pretrained=f"tiny-{kind}",
                        lora={"r": 4, "alpha": 8, "target_modules": "all-linear"}))
    net.load_base_weights()
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x0 = torch.randint(2, V, (3, 12), generator=torch.Generator().manual_seed(6))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        method.token_loss(net, x0, generator=torch.Generator().manual_seed(0)).nll.mean().backward()
        opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)  # the base never moved
    net.eval()
    x = torch.randint(0, V + 1, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(net.merged()(x), net(x), atol=1e-5, rtol=0)
    assert net.merged().config.lora is None
    # the saved folder holds the adapters; loading rebuilds the base from its pointer
    tok = CharTokenizer("".join(chr(ord("a") + i) for i in range(V - 1)))
    out = save_pretrained(tmp_path / "m", net, algo={"name": "mdlm", "T": 0, "time_conditioning": False},
                          noise={"type": "log-linear", "eps": 1e-3}, tokenizer=tok, length=12)
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(out / "model.safetensors"))
    again = from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(again.backbone(x), net(x), atol=0, rtol=0)


def test_bad_lora_settings_are_one_sentence():
    from duolm.models.hf_lm import check_lora

    assert check_lora({"r": 0}) is None
    for bad, needle in [({"r": -1}, "model.lora.r must be an integer >= 0"), ({"rank": 4}, "model.lora.rank is not"),
                        ({"r": 4, "dropout": 1.5}, "model.lora.dropout must lie in"),
                        ({"r": 4, "target_modules": []}, "model.lora.target_modules must be")]:
        with raises_said_as(needle):
            check_lora(bad)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_shift_keeps_the_ar_heads_alignment(kind):
    """With model.shift position i reads the hidden state at i - 1: under the causal mask its
    logits are the base's at i - 1, the base's prediction of token i."""
    net, base = _wrapped(kind, V + 1, causal=True, shift=True)
    x = torch.randint(2, V, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got, ref = net(x)[..., :V], base(input_ids=x).logits
    torch.testing.assert_close(got[:, 1:], ref[:, :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[:, 0], ref[:, 0], atol=1e-5, rtol=0)
    blocks = build_method("mdlm", V, block_size=3)
    with raises_said_as("model.shift reads each output from the position before it"):
        blocks.token_loss(_wrapped(kind, V + 1, shift=True)[0], x, t=torch.full((2, 3), 0.5))


def test_attention_mask_annealing_opens_the_causal_mask_over_its_steps():
    """DiffuLLaMA's annealing: causal at step 0, a share step / N of the future keys open (drawn
    from the step alone, so a resumed run draws the same masks), bidirectional from step N and
    whenever the model is not training."""
    net, _ = _wrapped("llama", V + 1, anneal_steps=100)
    causal, _ = _wrapped("llama", V + 1, causal=True)
    bidirectional, _ = _wrapped("llama", V + 1)
    x = torch.randint(2, V, (2, 10), generator=torch.Generator().manual_seed(8))
    net.train()
    net.lm.eval()  # no dropout in the comparison; net.training is what the annealing reads
    with torch.no_grad():
        net.set_step(0)
        torch.testing.assert_close(net(x), causal(x), atol=1e-5, rtol=0)
        net.set_step(100)
        torch.testing.assert_close(net(x), bidirectional(x), atol=1e-5, rtol=0)
    L = 200
    for step in (25, 50, 75):
        net.set_step(step)
        m = net.annealed(net.default_mask(L, "cpu"), torch.arange(L))
        assert m[torch.ones(L, L, dtype=torch.bool).tril()].all() and torch.equal(
            m, net.annealed(net.default_mask(L, "cpu"), torch.arange(L)))
        future = m[torch.ones(L, L, dtype=torch.bool).triu(1)].float().mean()
        assert abs(float(future) - step / 100) < 0.02
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), bidirectional(x), atol=1e-5, rtol=0)  # evaluation: bidirectional
    with raises_said_as("algo=ar stays causal"):
        HFConfig(vocab_size=3, hf_config={"model_type": "llama"}, causal=True, anneal_steps=10)


def test_annealing_with_blocks_opens_each_blocks_own_keys_inside_the_block_causal_mask():
    """With algo.block_size the annealed mask is block diffusion's x_t + x_0 mask with each block's
    later keys (by position) kept with probability step / N: causal inside the block at step 0, the
    block mask itself from step N; nothing outside the block mask is ever opened. A model trained
    this way runs through the block training pass."""
    from duolm.core.block_attention import block_diffusion_mask, training_positions

    net, _ = _wrapped("llama", V + 1, anneal_steps=100)
    net.train()
    L, block = 64, 16
    mask, pos = block_diffusion_mask(L, block, "cpu"), training_positions(L, "cpu")
    later = pos[None, :] > pos[:, None]
    for step, share in ((0, 0.0), (50, 0.5), (100, 1.0)):
        net.set_step(step)
        m = net.annealed(mask, pos)
        assert not (m & ~mask).any()                          # only ever a subset of the block mask
        assert torch.equal(m & ~later, mask & ~later)         # what is not in the future stays
        opened = m[mask & later].float().mean()
        assert abs(float(opened) - share) < 0.03, (step, float(opened))
    method = build_method("mdlm", V, block_size=4)
    net.set_step(10)
    x = torch.randint(2, V, (2, 8), generator=torch.Generator().manual_seed(2))
    loss = method.token_loss(net, x, t=torch.full((2, 2), 0.5), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss.nll).all()


def test_chat_holds_the_templated_conversation_and_cuts_each_reply_at_eos():
    """Model.chat: SmolLM2's chat template (offline) formats the messages, they are held clean at
    the start of the window, and each reply is the generated rest up to its first end-of-text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from duolm.app.api import Model
    from duolm.checkpoints.duolm_format import Pretrained
    from duolm.data.tokenizers import CharTokenizer, load_tokenizer

    tok = load_tokenizer("smollm2")
    method = build_method("mdlm", tok.vocab_size)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                        bos_token_id=None, eos_token_id=None, pad_token_id=None))
    net = HFLM(HFConfig(vocab_size=method.model_vocab_size, hf_config=base.config.to_dict(), pretrained="smollm2"))
    net.load_base_weights(base.state_dict())
    length = 48
    m = Model(Pretrained(net, method, tok, {"length": length, "algo": {"name": "mdlm"}}), device="cpu")
    messages = [{"role": "user", "content": "Say hi."}]
    prompt = tok.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = m.chat(messages, n=3, steps=8, seed=0)
    assert len(out.texts) == 3
    for smp, reply in zip(out.result["samples"], out.ids):
        assert smp["ids"][:len(prompt)] == list(prompt)                   # the conversation held clean
        assert tok.eos_id not in reply and len(reply) <= length - len(prompt)
        assert smp["ids"][len(prompt):len(prompt) + len(reply)] == reply  # the reply is what follows it
    # scoring goes through the same NELBO as every model (duolm eval, lm-eval's adapter)
    scores = m.nelbo(["Hello there, how are you?", "Fine."], num_mc_samples=2)
    assert all(math.isfinite(sc.nelbo) and sc.nelbo > 0 and sc.tokens > 0 for sc in scores)
    plain = Model(Pretrained(net, build_method("mdlm", 40), CharTokenizer("".join(chr(97 + i) for i in range(39))),
                             {"length": length, "algo": {"name": "mdlm"}}), device="cpu")
    with pytest.raises(ValueError, match="chat template"):
        plain.chat(messages)


def test_a_model_folder_keeps_its_tokenizer_and_loads_without_its_source(tmp_path):
    """A tokenizer read from a local folder is copied into the model folder, so the model loads
    (and tokenizes the same) after that folder is gone."""
    import shutil

    from duolm.data.tokenizers import load_tokenizer

    src = tmp_path / "my-tokenizer"
    load_tokenizer("smollm2").tok.save_pretrained(src)
    tok = load_tokenizer(str(src))
    method = build_method("mdlm", tok.vocab_size)
    base = _base("gpt2")
    net = HFLM(HFConfig(vocab_size=method.model_vocab_size, hf_config={**base.config.to_dict(), "vocab_size": V},
                        pretrained="tiny-gpt2"))
    out = save_pretrained(tmp_path / "m", net, algo={"name": "mdlm", "T": 0, "time_conditioning": False},
                          noise={"type": "log-linear", "eps": 1e-3}, tokenizer=tok, length=16)
    shutil.rmtree(src)
    again = from_pretrained(out)
    assert (out / "tokenizer").is_dir() and again.tokenizer.encode("Hello there") == tok.encode("Hello there")


def test_the_shift_is_on_by_default_where_it_was_measured_to_help_and_off_where_it_is_undefined():
    """model.shift=auto (the preset): on for whole-sequence MDLM and Duo (benchmarks/adaptation.py:
    a lower NELBO at equal steps for both), off with blocks and for AR; a bad value or an explicit
    shift with AR or blocks is one sentence naming the key."""
    from duolm.app.config import ConfigError, compose_components

    def shift(*over):
        return compose_components(["model=hf", "data.tokenizer=smollm2", *over])[1].backbone.shift

    assert shift("algo=mdlm") is True and shift("algo=duo_base") is True
    assert shift("algo=mdlm", "algo.block_size=16") is False and shift("algo=ar") is False
    assert shift("algo=mdlm", "model.shift=false") is False
    for over, needle in ((["algo=ar", "model.shift=true"], "algo=ar predicts the next token already"),
                         (["algo=mdlm", "algo.block_size=16", "model.shift=true"], "set algo.block_size=null"),
                         (["algo=mdlm", "model.shift=maybe"], "model.shift must be true, false or auto")):
        with pytest.raises(ConfigError, match=needle):
            shift(*over)
