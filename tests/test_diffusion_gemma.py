"""DiffusionGemma (transformers' DiffusionGemmaForBlockDiffusion) under duolm, on tiny random configs
saved with save_pretrained (tests/diffusion_gemma_tiny.py; nothing is downloaded):

- the backbone's logits are transformers' (encoder + canvas, with and without self-conditioning,
  a second canvas through the cache);
- duolm's EB-sampler row and canvas loop reproduce `model.generate()` token for token (several
  settings, batch 3, left padding, EOS inside a canvas, rows stopping early);
- duolm.load reads the folder (its tokenizer), its own samplers run canvas by canvas;
- the canvas NELBO (Duo's uniform-state bound with the linear schedule the loader assumes) equals
  a brute-force discrete-time bound: every x_t of a 2-token canvas over 6 tokens enumerated, the
  posterior KLs summed over 2000 steps.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusion_gemma_tiny import EOS, tiny_folder, tiny_model

from duolm.contracts import Backbone, CapabilityError
from duolm.core.methods import build_method
from duolm.core.schedules import make_schedule
from duolm.models.diffusion_gemma import DiffusionGemma, DiffusionGemmaSettings
from duolm.sampling.blocks import canvas_sample
from duolm.sampling.entropy_bound import EntropyBoundOptions, entropy_bounded
from duolm.sampling.spec import SamplerSpec

pytestmark = pytest.mark.filterwarnings("ignore")


def _wrap(model):
    settings = DiffusionGemmaSettings(vocab_size=model.config.text_config.vocab_size,
                                      hf_config=model.config.to_dict(), init="random")
    return DiffusionGemma(settings, network=model)


def _method(vocab, canvas):
    return build_method("duo", vocab, schedule=make_schedule("log-linear", 0.0), block_size=canvas,
                        time_conditioning=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def test_the_backbone_is_transformers_forward(model):
    net = _wrap(model)
    assert isinstance(net, Backbone) and net.capabilities.encoder_prefix and net.capabilities.self_conditioning
    g = torch.Generator().manual_seed(0)
    prompt, canvas = torch.randint(3, 300, (2, 5), generator=g), torch.randint(0, 300, (2, 8), generator=g)
    sc = torch.randn(2, 8, 300, generator=g)
    for self_cond in (None, sc):
        ref = model(input_ids=prompt, decoder_input_ids=canvas, self_conditioning_logits=self_cond).logits
        cache = net.new_cache()
        net(prompt, cache=cache, store_kv=True)
        ours = net(canvas, cache=cache, store_kv=False, position_offset=5, self_cond=self_cond)
        assert (ours - ref).abs().max() < 1e-5
        assert len(cache) == 5  # the decoder read the cache, did not extend it
    # a second canvas through the cache: transformers' encoder over prompt + canvas, then the decoder
    second = torch.randint(0, 300, (2, 8), generator=g)
    ref = model(input_ids=torch.cat([prompt, canvas], 1), decoder_input_ids=second).logits
    cache = net.new_cache()
    net(prompt, cache=cache, store_kv=True)
    net(canvas, cache=cache, store_kv=True, position_offset=5)
    assert (net(second, cache=cache, store_kv=False, position_offset=13) - ref).abs().max() < 1e-5


def test_what_it_cannot_do_is_refused_in_one_sentence(model):
    net = _wrap(model)
    x = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(CapabilityError, match="reads the prompt from its encoder's cache"):
        net(x)
    with pytest.raises(CapabilityError, match="soft or weighted"):
        net(torch.zeros(1, 8, 300))
    with pytest.raises(CapabilityError, match="at least one token"):
        net(x, cache=net.new_cache(), store_kv=False)


def test_the_entropy_bound_keeps_the_lowest_entropies_within_the_bound():
    e = torch.tensor([[0.5, 0.01, 0.2, 0.02, 3.0]])
    # ascending 0.01, 0.02, 0.2, 0.5, 3.0; cumulative minus the last: 0, 0.01, 0.03, 0.23, 0.73
    assert entropy_bounded(e, 0.1).tolist() == [[False, True, True, True, False]]
    assert entropy_bounded(e, 0.3).tolist() == [[True, True, True, True, False]]
    assert entropy_bounded(e, 1e-9).tolist() == [[False, True, False, False, False]]  # always the lowest


SETTINGS = [  # (steps, bound, t_min, t_max, stability, confidence, eos, scale)
    (8, 0.1, 0.4, 0.8, 1, 0.005, EOS, 1.0),
    (16, 2.0, 0.4, 0.8, 1, 0.005, EOS, 1.0),
    (4, 0.5, 0.1, 1.5, 2, 0.005, EOS, 1.0),
    (12, 0.3, 0.4, 0.8, 0, 1.0, EOS, 30.0),   # a peaky model: rows stop early, at different steps
    (12, 0.3, 0.4, 0.8, 0, 3.0, EOS, 10.0),
    (6, 1.0, 0.4, 0.8, 0, 6.0, 200, 1.0),      # every row stops at once; an EOS id held mid-canvas
]
_MODELS = {}


def _model(scale):
    if scale not in _MODELS:
        _MODELS[scale] = tiny_model(0, scale=scale)
    return _MODELS[scale]


def _until_eos(row, start, eos):
    row = row.tolist()
    for i in range(start, len(row)):
        if row[i] == eos:
            return row[:i + 1]
    return row


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("setting", SETTINGS)
def test_the_eb_sampler_reproduces_generate_token_for_token(setting, padded):
    from transformers import EntropyBoundSamplerConfig

    steps, bound, t_min, t_max, stability, confidence, eos, scale = setting
    model = _model(scale)
    net, method = _wrap(model), _method(300, 8)
    ids = torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    if padded:  # left padding, as transformers pads a batch of prompts
        mask[0, :2] = False
        mask[2, :1] = False
        ids = torch.where(mask, ids, torch.zeros_like(ids))
    kw = {"attention_mask": mask} if padded else {}
    torch.manual_seed(1)
    ref = model.generate(ids, max_new_tokens=24, max_denoising_steps=steps, t_min=t_min, t_max=t_max,
                         stability_threshold=stability, confidence_threshold=confidence, eos_token_id=eos,
                         sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound), **kw).sequences
    torch.manual_seed(1)
    spec = SamplerSpec(predictor="entropy_bound", steps=steps, stop_at_eos=True,
                       options=EntropyBoundOptions(bound=bound, t_min=t_min, t_max=t_max,
                                                   stability_threshold=stability, confidence_threshold=confidence))
    ours = canvas_sample(method, net, spec, 3, 5 + 24, prefix=ids, prefix_mask=mask if padded else None, eos_id=eos)
    for r in range(3):  # generate() keeps drawing after a row's EOS; duolm writes EOS there
        assert _until_eos(ours[r], 5, eos) == _until_eos(ref[r], 5, eos)
    assert ours.shape[1] <= ref.shape[1]


def test_prompts_of_different_lengths_batch_as_transformers_batched_generate():
    """sample_prompted (RL groups, accuracy checks, the server's batches) left-pads different prompts
    into one encoder batch: each row reproduces transformers' generate() of the padded batch token
    for token, and comes back as its own prompt followed by its completion."""
    from transformers import EntropyBoundSamplerConfig

    from duolm.sampling.generate import sample_prompted

    steps, bound, t_min, t_max, stability, confidence, eos, scale = SETTINGS[0]
    model = _model(scale)
    net, method = _wrap(model), _method(300, 8)
    prompts = [[5, 17, 201, 9, 44], [12, 7, 99], [250, 3, 61, 8]]
    mask = torch.tensor([[True] * 5, [False, False] + [True] * 3, [False] + [True] * 4])
    ids = torch.tensor([prompts[0], [0, 0, *prompts[1]], [0, *prompts[2]]])
    torch.manual_seed(1)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, max_denoising_steps=steps, t_min=t_min,
                         t_max=t_max, stability_threshold=stability, confidence_threshold=confidence,
                         eos_token_id=eos, sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound)).sequences
    torch.manual_seed(1)
    spec = SamplerSpec(predictor="entropy_bound", steps=steps, stop_at_eos=True,
                       options=EntropyBoundOptions(bound=bound, t_min=t_min, t_max=t_max,
                                                   stability_threshold=stability, confidence_threshold=confidence))
    ours = sample_prompted(method, net, prompts, [1, 1, 1], 5 + 24, spec, bos_id=2, eos_id=eos)
    assert ours.shape == (3, 29)
    for r, p in enumerate(prompts):
        assert ours[r, :len(p)].tolist() == p
        mine = _until_eos(ours[r], len(p), eos)
        theirs = _until_eos(ref[r, 5 - len(p):], len(p), eos)
        n = min(len(mine), len(theirs), 29)
        assert mine[:n] == theirs[:n] and n > len(p)


def test_the_eb_sampler_stops_rows_early_and_says_so():
    from duolm.sampling.blocks import CachedBlock
    from duolm.sampling.entropy_bound import entropy_bound_sample
    from duolm.sampling.observers import Recorder
    from duolm.sampling.registry import SamplingModel

    net, method = _wrap(_model(30.0)), _method(300, 8)
    cache = net.new_cache()
    net(torch.randint(3, 300, (3, 5), generator=torch.Generator().manual_seed(5)), cache=cache, store_kv=True)
    block = CachedBlock(net, cache, 5)
    rec = Recorder()
    torch.manual_seed(0)
    entropy_bound_sample(SamplingModel.from_method(method, block).denoiser, method.process, method.schedule, (3, 8),
                         steps=12, options=EntropyBoundOptions(stability_threshold=0, confidence_threshold=1.0),
                         conditioning=block, observer=rec)
    counts = rec.counts  # the batch ran until its last row stopped; the rows stopped before that, unevenly
    assert counts["stopped_early"] == 3 and counts["calls_per_row"] < counts["denoiser_calls"] < 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("dg") / "tiny")


def test_duolm_loads_the_folder_and_samples_it_with_every_x0_sampler(folder):
    import duolm

    m = duolm.load(str(folder))
    assert m.pretrained.config["noise"] == {"type": "log-linear", "eps": 0.0}  # the assumed schedule, stated
    assert m.pretrained.method.block_size == 8 and m.tokenizer.encode("w5 w6") == [5, 6]
    for sampler in ("entropy_bound", "ancestral", "psi", "confidence"):
        g = m.generate(2, steps=6, sampler=sampler, prompt="w5 w6 w7", length=19, seed=3)
        assert all(ids[:4] == [2, 5, 6, 7] for ids in g.ids) and all(len(ids) == 4 + 16 for ids in g.ids)
        again = m.generate(2, steps=6, sampler=sampler, prompt="w5 w6 w7", length=19, seed=3)
        assert again.ids == g.ids


def test_self_conditioning_is_carried_between_steps(folder, monkeypatch):
    """The ancestral sampler feeds each call the previous call's logits: turning the block off
    (the backbone declaring no self-conditioning) changes the draws."""
    import duolm

    m = duolm.load(str(folder))
    with_sc = m.generate(2, steps=6, sampler="ancestral", seed=1).ids
    caps = m.pretrained.backbone.capabilities
    monkeypatch.setattr(DiffusionGemma, "capabilities", property(lambda self: caps.changed(self_conditioning=False)))
    without = m.generate(2, steps=6, sampler="ancestral", seed=1).ids
    assert with_sc != without


def _posterior(x0, x_t, alpha_s, alpha_t, K):
    """q(x_s | x_t, x_0) of the uniform process, (K,), written out: q(x_t | x_s) q(x_s | x_0),
    normalised. x0: a token, or a distribution over tokens (K,) plugged in for the one-hot: the
    model's reverse step in Duo (and UDLM), q(x_t | x_s) (alpha_s p + (1 - alpha_s) / K) normalised,
    which is not the mixture sum_y p(y) q(x_s | x_t, y) (the normalisers q(x_t | y) differ by y;
    both are valid reverse models, with different bounds; duolm's losses are the papers')."""
    a_ts = alpha_t / alpha_s
    xs = torch.arange(K, dtype=torch.float64)
    forward = a_ts * (xs == x_t) + (1 - a_ts) / K
    one_hot = (xs == x0).double() if isinstance(x0, int) else x0
    p = forward * (alpha_s * one_hot + (1 - alpha_s) / K)
    return p / p.sum()


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_the_canvas_nelbo_is_the_limit_of_the_brute_force_discrete_kl(t):
    """Vocabulary 6, canvas 2, prompt [BOS]: at time t of alpha = 1 - t (the schedule the loader
    assumes), duolm's canvas loss (the decoder over every x_t, read by Duo's method) averaged
    exactly over the 36 canvases x_t ~ q(x_t | x_0) equals T * E[KL(q(x_s | x_t, x_0) || p(x_s | x_t))]
    at s = t - 1/T, T = 10^4, with the uniform posterior written out here and the model's reverse
    step the papers' (_posterior): the integrand of the NELBO, brute force."""
    K, C, T = 6, 2, 10_000
    net = _wrap(tiny_model(3, vocab_size=K, canvas_length=C, scale=8.0))  # float32: the experts run no float64
    method = _method(K, C)
    method.loss_dtype = torch.float64
    x0 = torch.tensor([4, 1])  # the canvas after the prompt [BOS]
    states = torch.cartesian_prod(torch.arange(K), torch.arange(K))  # (36, 2): every x_t
    cache = net.new_cache()
    net(torch.full((36, 1), 2), cache=cache, store_kv=True)
    with torch.no_grad():
        logits = net(states, cache=cache, store_kv=False, position_offset=1).double()
    log_p = logits.log_softmax(-1)
    a_t, a_s = 1 - t, 1 - (t - 1 / T)
    w = (a_t * (states == x0).double() + (1 - a_t) / K).prod(-1)  # q(x_t | x_0), (36,)
    assert abs(float(w.sum()) - 1) < 1e-12
    brute = 0.0
    for j in range(36):
        for i in range(C):
            q = _posterior(int(x0[i]), int(states[j, i]), a_s, a_t, K)
            model = _posterior(log_p[j, i].exp(), int(states[j, i]), a_s, a_t, K)
            brute += float(w[j]) * T * float((q * (q.clamp_min(1e-300).log() - model.log())).sum())
    tt = torch.tensor([[t]], dtype=torch.float64)
    sched = method.schedule(tt)
    out = method.read_logits(logits.clone(), states, sched.alpha)
    loss = method.loss_from_output(out, states, x0.expand(36, -1), tt.expand(36, 1), sched.alpha.expand(36, 1),
                                   sched.dalpha.expand(36, 1))
    ours = float((w[:, None] * loss).sum())
    assert ours > 0 and abs(ours - brute) < 2e-3 * brute, (ours, brute)


def test_the_row_declares_what_the_network_does(model):
    import inspect

    from duolm.models.backbones import BACKBONES, build_backbone, checked

    net = _wrap(model)
    assert checked(net, "diffusion_gemma") is net
    assert net.capabilities.within(BACKBONES["diffusion_gemma"].capabilities) == []
    protocol = list(inspect.signature(Backbone.forward).parameters.values())[1:]
    assert list(inspect.signature(net.forward).parameters.values()) == protocol
    # the table builds it from its config dict (random weights: init=random)
    again = build_backbone({**net.config.to_dict(), "init": "random"})
    assert isinstance(again, DiffusionGemma) and again.canvas_length == 8


@pytest.mark.parametrize("algo,block_size,refused", [("duo", 8, None), ("mdlm", 8, None), ("duo", None, "canvas"),
                                                     ("ar", None, "causal")])
def test_a_method_asks_what_it_needs_of_it(model, algo, block_size, refused):
    net = _wrap(model)
    method = build_method(algo, 300, block_size=block_size)
    if refused is None:
        method.check_backbone(net.capabilities)
    else:
        with pytest.raises(CapabilityError, match=refused):
            method.check_backbone(net.capabilities)


def test_a_saved_model_is_read_back_by_transformers_and_by_duolm(model, tmp_path):
    from transformers import DiffusionGemmaForBlockDiffusion

    import duolm

    net = _wrap(model)
    net.save_transformers(tmp_path / "copy")
    back = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "copy")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    from diffusion_gemma_tiny import tokenizer

    tokenizer().save_pretrained(tmp_path / "copy")
    loaded = duolm.load(str(tmp_path / "copy"))
    x = torch.tensor([[2, 5, 6]])
    cache = loaded.pretrained.backbone.new_cache()
    loaded.pretrained.backbone(x, cache=cache, store_kv=True)
    ref = model(input_ids=x, decoder_input_ids=torch.arange(10, 18)[None]).logits
    ours = loaded.pretrained.backbone(torch.arange(10, 18)[None], cache=cache, store_kv=False, position_offset=3)
    assert (ours - ref).abs().max() < 1e-5


def test_a_folder_without_a_tokenizer_is_one_sentence(model, tmp_path):
    import duolm

    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(Exception) as err:
        duolm.load(str(tmp_path / "bare"))
    assert "needs its tokenizer" in str(err.value) and "\n" not in str(err.value)


def test_the_commands_sample_and_score_a_folder(folder, tmp_path, monkeypatch):
    """`duolm sample` and `duolm eval` with eval.checkpoint_path=<DiffusionGemma folder>: samples with
    the prompt held, and a NELBO that states the schedule it assumed; nothing written into the folder."""
    import json

    from duolm.app.cli import main

    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    out = tmp_path / "s.json"
    assert main(["sample", f"eval.checkpoint_path={folder}", "sampling.predictor=entropy_bound", "sampling.steps=6",
                 "sampling.num_samples=2", 'sampling.prefix="w5 w6"', f"sampling.output={out}"]) == 0
    samples = json.loads(out.read_text())["samples"]
    assert len(samples) == 2 and all(s["ids"][:3] == [2, 5, 6] for s in samples)
    (tmp_path / "t.txt").write_text("w5 w6 w7 w8 w9 w10 w11\nw12 w13 w14 w15 w16\n" * 10)
    ev = tmp_path / "e.json"
    assert main(["eval", f"eval.checkpoint_path={folder}", "data=local", f"data.path={tmp_path / 't.txt'}",
                 "eval.max_batches=1", f"eval.output={ev}"]) == 0
    result = json.loads(ev.read_text())
    assert result["noise"] == {"type": "log-linear", "eps": 0.0} and result["nll"] > 0
    assert sorted(p.name for p in folder.iterdir()) == before


def _train_cfg(run, folder, corpus, *extra):
    from duolm.app.config import compose

    return compose(["model=diffusion_gemma", f"model.pretrained={folder}", "data=local", f"data.path={corpus}",
                    f"data.tokenizer={folder}", f"data.cache_dir={run / 'cache'}", f"run.dir={run / 'run'}",
                    "algo=duo", "algo.block_size=8", "algo.curriculum.mode=none", "model.length=16",
                    "loader.global_batch_size=4", "optim.warmup_steps=0", "optim.lr=3e-3",
                    "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false", "logging.csv=false",
                    "trainer.limit_val_batches=1", "sampling.num_samples=2", "sampling.steps=4", "eval.max_batches=1",
                    *extra])


@pytest.fixture(scope="module")
def dg_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("dgc") / "words.txt"
    path.write_text("".join(" ".join(f"w{3 + (i * 7 + j) % 20}" for j in range(40)) + "\n" for i in range(30)))
    return path


def test_fine_tuning_lowers_the_loss_resumes_exactly_and_reads_back(folder, dg_corpus, tmp_path):
    """model=diffusion_gemma model.pretrained=<folder>: Duo's uniform-state objective over canvases
    (self-conditioning trained half the time) lowers the canvas NELBO of a 20-word language from
    the random start; a run stopped at 3 steps and resumed to 6 ends where an uninterrupted run
    ends; the trained model loads with duolm.load, starts from the folder's weights, and its
    network saves in transformers' format and reads back with from_pretrained."""
    from safetensors.torch import load_file
    from transformers import DiffusionGemmaForBlockDiffusion

    import duolm
    from duolm.app.training_run import train

    quiet = {"log": lambda *_: None}
    straight = train(_train_cfg(tmp_path / "a", folder, dg_corpus, "trainer.max_steps=6"), **quiet)
    train(_train_cfg(tmp_path / "b", folder, dg_corpus, "trainer.max_steps=3"), **quiet)
    resumed = train(_train_cfg(tmp_path / "b", folder, dg_corpus, "trainer.max_steps=6"), **quiet)
    a = load_file(Path(straight["model_dir"]) / "model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    long = train(_train_cfg(tmp_path / "c", folder, dg_corpus, "trainer.max_steps=40"), **quiet)
    trained = duolm.load(long["model_dir"])
    start = duolm.load(str(folder))
    text = [" ".join(f"w{3 + (5 * 7 + j) % 20}" for j in range(15))]
    before = start.nelbo(text, num_mc_samples=16)[0].nelbo
    after = trained.nelbo(text, num_mc_samples=16)[0].nelbo
    assert after < before - 5, (before, after)
    # the run's model folder is transformers' own (config.json, model.safetensors), duolm's config beside it
    back = DiffusionGemmaForBlockDiffusion.from_pretrained(long["model_dir"])
    ours = dict(trained.pretrained.backbone.network.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, ours[k]), k
    assert (Path(long["model_dir"]) / "duolm.json").exists()
    assert trained.pretrained.config["model"]["pretrained"] == str(folder)


def test_push_stages_a_transformers_folder_with_a_card_naming_the_base(folder, tmp_path):
    from transformers import DiffusionGemmaForBlockDiffusion

    from duolm.app import hub

    staged = hub.stage(str(folder), "me/dg-tiny", tmp_path)
    card = (staged / "README.md").read_text()
    assert "library_name: duolm" in card and "DiffusionGemma" in card
    DiffusionGemmaForBlockDiffusion.from_pretrained(staged)  # what the repository holds loads in transformers
    base = hub.base_model_of({"type": "diffusion_gemma", "pretrained": "google/diffusiongemma-26B-A4B-it"})
    assert base == {"id": "google/diffusiongemma-26B-A4B-it", "license": "gemma"}


@pytest.fixture()
def diffusers_pipeline_on_transformers(monkeypatch):
    """diffusers 0.42.1's DiffusionGemmaPipeline passes `past_key_values=` to
    create_diffusion_decoder_attention_mask, which transformers 5.25 renamed `cache` (no alias): the
    pipeline fails as shipped. This passes it on under the new name, nothing else."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaDecoderModel

    original = DiffusionGemmaDecoderModel.create_diffusion_decoder_attention_mask

    def renamed(config, inputs_embeds, cache=None, decoder_attention_mask=None, past_key_values=None):
        return original(config=config, inputs_embeds=inputs_embeds,
                         cache=cache if cache is not None else past_key_values,
                         decoder_attention_mask=decoder_attention_mask)

    monkeypatch.setattr(DiffusionGemmaDecoderModel, "create_diffusion_decoder_attention_mask", staticmethod(renamed))


DDIM = [  # (steps, temperature, corrector_steps, corrector_k, confidence_threshold, scale)
    (8, 0.0, 0, 1, 0.005, 1.0),
    (8, 1.0, 0, 1, 0.005, 1.0),
    (9, 0.7, 2, 2, 0.005, 1.0),      # the leave-one-out corrector: 3 predictor steps corrected twice each
    (12, 1.0, 1, 3, 5.0, 30.0),      # a peaky model: rows stop early; an EOS mid-canvas
    (6, 0.0, 0, 1, None, 1.0),       # never stop early
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("setting", DDIM)
def test_the_ddim_row_reproduces_diffusers_pipeline_draw_for_draw(setting, diffusers_pipeline_on_transformers):
    from diffusers import DiffusionGemmaPipeline, DiscreteDDIMScheduler
    from diffusion_gemma_tiny import tokenizer

    from duolm.sampling.ddim import DDIMOptions

    steps, temperature, corrector_steps, k, confidence, scale = setting
    model = _model(scale)
    tok = tokenizer()
    tok.chat_template = "{% for m in messages %}<bos>{{ m['content'] }}{% endfor %}"
    scheduler = DiscreteDDIMScheduler(num_inference_steps=steps, corrector_steps=corrector_steps, corrector_k=k)
    pipe = DiffusionGemmaPipeline(model=model, scheduler=scheduler, processor=tok)
    pipe.set_progress_bar_config(disable=True)
    messages = [[{"role": "user", "content": "w5 w6 w7"}], [{"role": "user", "content": "w9 w10 w11"}]]
    ref = pipe(messages=messages, gen_length=16, num_inference_steps=steps, temperature=temperature, eos_token_id=EOS,
               confidence_threshold=confidence, generator=torch.Generator().manual_seed(3), output_type="seq").sequences
    spec = SamplerSpec(predictor="ddim", steps=steps, stop_at_eos=True,
                       options=DDIMOptions(temperature=temperature, corrector_steps=corrector_steps, corrector_k=k,
                                           confidence_threshold=confidence))
    ours = canvas_sample(_method(300, 8), _wrap(model), spec, 2, 4 + 16, prefix=torch.tensor([[2, 5, 6, 7], [2, 9, 10, 11]]),
                         generator=torch.Generator().manual_seed(3), eos_id=EOS)[:, 4:]
    for r in range(2):  # the pipeline keeps a row's tokens after its EOS; duolm writes EOS there
        assert _until_eos(ours[r], 0, EOS) == _until_eos(ref[r], 0, EOS)


def test_lora_adapters_are_one_set_for_encoder_and_decoder_and_merge_to_the_same_logits():
    from peft.tuners.lora import LoraLayer

    model = tiny_model(0)
    settings = DiffusionGemmaSettings(vocab_size=300, hf_config=model.config.to_dict(), init="random", lora={"r": 4})
    net = DiffusionGemma(settings, network=model)
    assert net.capabilities.adapters
    modules = dict(net.network.named_modules())
    q_enc = modules["model.encoder.language_model.layers.0.self_attn.q_proj"]
    q_dec = modules["model.decoder.layers.0.self_attn.q_proj"]
    assert isinstance(q_dec, LoraLayer) and q_dec.lora_A is q_enc.lora_A
    assert any("experts" in n and "lora_" in n for n, _ in net.named_parameters())  # the experts are adapted too
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(0)
    prompt, canvas = torch.randint(3, 300, (2, 5), generator=g), torch.randint(0, 300, (2, 8), generator=g)

    def logits(n):
        cache = n.new_cache()
        n(prompt, cache=cache, store_kv=True)
        return n(canvas, cache=cache, store_kv=False, position_offset=5)

    adapted, plain = logits(net), logits(net.merged())
    assert (adapted - logits(_wrap(tiny_model(0)))).abs().max() > 1e-2  # the adapters move the output
    assert (adapted - plain).abs().max() < 1e-4


def test_a_lora_run_trains_adapters_and_saves_the_merged_model(folder, dg_corpus, tmp_path):
    from transformers import DiffusionGemmaForBlockDiffusion

    from duolm.app.training_run import train

    out = train(_train_cfg(tmp_path, folder, dg_corpus, "trainer.max_steps=4", "model.lora.r=4"), log=lambda *_: None)
    tuned = DiffusionGemmaForBlockDiffusion.from_pretrained(out["model_dir"]).state_dict()
    base = DiffusionGemmaForBlockDiffusion.from_pretrained(folder).state_dict()
    moved = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert moved and all("self_attn" in k or "experts" in k for k in moved)


def test_dcd_reads_canvases_and_its_loss_vanishes_when_teacher_and_student_agree():
    """DCD over canvases: with delta = 0 and the teacher the student, x_s = x_t and the KL is 0; with a
    step back it is positive; the prompt token carries no loss."""
    from duolm.core.operator import DiffusionTransform
    from duolm.training.distill import dcd_loss

    net, method = _wrap(tiny_model(0)), _method(300, 8)
    x0 = torch.randint(3, 300, (3, 17), generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5)
    op = DiffusionTransform(300)
    same = dcd_loss(method, net, net, x0, t, 0.0, operator=op, generator=torch.Generator().manual_seed(1))
    assert same.weight[:, 0].eq(0).all() and same.weight[:, 1:].eq(1).all()
    assert (same.nll * same.weight).abs().max() < 1e-6
    back = dcd_loss(method, net, net, x0, t, 0.25, operator=op, generator=torch.Generator().manual_seed(1))
    assert (back.nll * back.weight).sum() > 1e-3


def test_duolm_distill_runs_on_a_folder(folder, dg_corpus, tmp_path, monkeypatch):
    from transformers import DiffusionGemmaForBlockDiffusion

    from duolm.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["distill", f"eval.checkpoint_path={folder}", "data=local", f"data.path={dg_corpus}",
                 f"run.dir={tmp_path / 'dcd'}", "trainer.max_steps=3", "loader.global_batch_size=4",
                 "trainer.val_check_interval=1000", "trainer.limit_val_batches=1", "eval.max_batches=1",
                 "sampling.num_samples=2", "sampling.steps=4", "distill.T=8"]) == 0
    student = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "dcd" / "model").state_dict()
    start = DiffusionGemmaForBlockDiffusion.from_pretrained(folder).state_dict()
    assert any(not torch.equal(start[k], student[k]) for k in start)


def test_the_lm_eval_adapter_scores_a_folder(folder):
    """lm-eval's loglikelihood requests on a DiffusionGemma folder: a NELBO per continuation and the greedy
    check, through the canvases; generate_until continues a context."""
    import duolm
    from duolm.app.lm_eval_adapter import DuolmLM

    class Request:
        def __init__(self, *args):
            self.args = args

    lm = DuolmLM(duolm.load(str(folder), device="cpu"), num_mc_samples=4, steps=4)
    out = lm.loglikelihood([Request("w5 w6 w7", " w8 w9"), Request("w5", " w6")])
    assert len(out) == 2 and all(ll < 0 and isinstance(greedy, bool) for ll, greedy in out)
    text = lm.generate_until([Request("w5 w6", {"max_gen_toks": 4, "until": []})])
    assert isinstance(text[0], str)


def test_sft_on_instruction_records_puts_each_prompt_in_the_encoder(folder, tmp_path):
    """Records {"prompt", "response"} with data.blocks=pad: each row's prompt (its leading clean
    positions, of different lengths across the batch) goes through the encoder and the response with
    its EOS padding is cut into canvases after it; the run trains and validates."""
    import json

    from duolm.app.training_run import train

    recs = tmp_path / "recs.jsonl"
    recs.write_text("".join(json.dumps({"prompt": " ".join(f"w{3 + (i + j) % 9}" for j in range(1 + i % 3)),
                                        "response": f"w{20 + i % 5} w{30 + i % 4}"}) + "\n" for i in range(40)))
    out = train(_train_cfg(tmp_path, folder, recs, "trainer.max_steps=3", "data.blocks=pad"), log=lambda *_: None)
    assert out["steps"] == 3
    import duolm
    from duolm.evaluation.likelihood import continuation_nelbo

    m = duolm.load(out["model_dir"])
    scores = continuation_nelbo(m.method, m.pretrained.backbone, [([2, 5, 6], [25, 31, 1]), ([2, 7], [26, 32, 1])],
                                length=16, pad_id=1, num_samples=2)
    assert all(0 < s["nelbo"] < 1e3 and s["tokens"] == 3 for s in scores)
