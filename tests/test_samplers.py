"""One suite every sampler must pass, with oracle denoisers on tiny enumerable distributions."""

import pytest
import torch
from oracles import all_sequences, oracle_posterior_marginals, random_joint
from said_as import raises_said_as
from scipy.stats import chisquare

from duolm.core.processes import AbsorbingProcess, UniformProcess
from duolm.core.schedules import LogLinear
from duolm.sampling import SAMPLERS as SAMPLER_TABLE
from duolm.sampling import (
    Kappa,
    KappaSchedule,
    PsiOptions,
    SamplerSpec,
    SamplingModel,
    analytic_sample,
    ancestral_sample,
    draw_categorical,
    linear_constant_linear_grid,
    linear_grid,
    nucleus,
    parse_kappa,
    psi_sample,
    race_categorical,
)
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.ddim import DDIMOptions
from duolm.sampling.entropy_bound import EntropyBoundOptions
from duolm.sampling.observers import Recorder

K = 3
SCHED = LogLinear(eps=0.0)


def oracle(process, joint, L):
    """The exact denoiser: p(x_0^i | x_t) (absorbing) or p(x_0^i | x_t^{-i}) (uniform)."""
    seqs = all_sequences(K, L)

    def den(x_t, alpha_t):
        post = oracle_posterior_marginals(process, seqs, joint, x_t, alpha_t.reshape(-1, 1).double(),
                                          exclude_self=process.kind == "uniform")
        return post.clamp_min(1e-300).log()

    return den


def score_oracle(process, joint, L):
    """SEDD's exact concrete score on masked positions: alpha/(1 - alpha) p(x_0 = y | x_t)."""
    den = oracle(process, joint, L)

    def score(x_t, alpha_t):
        a = alpha_t.reshape(-1, 1, 1).double()
        out = den(x_t, alpha_t) + torch.log(a / (1 - a))
        return out.scatter(-1, x_t[..., None], 0.0)  # the ratio p_t(x_t) / p_t(x_t) = 1, as SEDD parameterises

    return score


def empirical(samples, L):
    idx = (samples * torch.tensor([K ** (L - 1 - i) for i in range(L)])).sum(-1)
    return torch.bincount(idx, minlength=K ** L).double()


# The suite runs every sampler of the table through the table (duolm.sampling.SAMPLERS), so a new
# row is tested here without touching this file. Psi is run with several kappa schedules.
KAPPAS = {"constant": KappaSchedule(Kappa("constant", 0.5), Kappa("constant", 0.5), Kappa("constant", 0.5)),
          "pc": KappaSchedule(Kappa("pc"), Kappa("pc"), Kappa("pc")),
          "max-capped": KappaSchedule(Kappa("max-capped", 0.05), Kappa("max-capped", 0.05), Kappa("max-capped", 0.05)),
          "max-rescale": KappaSchedule(Kappa("posterior"), Kappa("max-rescale", 0.5), Kappa("posterior"))}


def variants():
    """(test name, table name, its options or None) for every diffusion sampler in the table.

    Psi runs with several kappa schedules. Confidence decoding proposes by drawing (its greedy
    default is deterministic, so no distribution to test); it is a heuristic, exact only where one
    position is free (one token, one blank), so the pair test below takes the exact rows only and
    tests/test_confidence_sampler.py measures what it does to a pair. The EB-sampler returns the
    argmax of its last prediction (DiffusionGemma's rule: mode-seeking by design, no distribution
    to test): test_the_eb_sampler_finds_the_mode_on_an_oracle below and tests/test_diffusion_gemma.py."""
    out = []
    for name, entry in SAMPLER_TABLE.items():
        if entry.needs == "ar" or name == "entropy_bound":
            continue  # a causal network, not a denoiser: tests/test_dit.py and the CLI tests
        if name == "psi":
            out += [(f"psi-{k}", name, PsiOptions(kappa=kappa)) for k, kappa in KAPPAS.items()]
        elif name == "confidence":
            out.append((name, name, ConfidenceOptions(proposal="sample")))
        elif name == "ddim":  # a draw of x_0 (temperature 1), every step run (no early stop)
            out.append((name, name, DDIMOptions(temperature=1.0, confidence_threshold=None)))
        else:
            out.append((name, name, None))
    return out


def processes_for(entry):
    """The processes an entry can sample: a score sampler and an output-reusing one need an
    absorbing process (the score is SEDD's; only MDLM's denoiser ignores alpha_t)."""
    if entry.needs == "score" or entry.reuses_output:
        return ["absorbing"]
    return list(entry.processes)


def run(name, process, joint, L, n, steps, seed):
    g = torch.Generator().manual_seed(seed)
    label, table_name, options = next(v for v in variants() if v[0] == name)
    entry = SAMPLER_TABLE[table_name]
    if entry.needs == "score":  # sigma = -log alpha must stay finite at t = 1, as in SEDD (alpha(1) = 1e-3)
        model = SamplingModel(score_oracle(process, joint, L), process, LogLinear(1e-3), "score")
    else:
        model = SamplingModel(oracle(process, joint, L), process, SCHED, "x0")  # the oracle ignores alpha_t
    spec = SamplerSpec(predictor=table_name, steps=steps, noise_removal="ancestral", eps=1e-4, options=options)
    return entry.run(model, spec, (n, L), generator=g)


SAMPLERS = [(label, kind) for label, table_name, _ in variants() for kind in processes_for(SAMPLER_TABLE[table_name])]
EXACT = [(label, kind) for label, kind in SAMPLERS if SAMPLER_TABLE[label.split("-")[0]].exact]


def test_the_suite_covers_every_sampler_in_the_table():
    covered = {table_name for _, table_name, _ in variants()} | {"entropy_bound"}
    assert covered == {n for n, e in SAMPLER_TABLE.items() if e.needs != "ar"} and len(SAMPLERS) >= 10


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_the_eb_sampler_finds_the_mode_on_an_oracle(kind):
    """A data distribution with one dominant sequence (90%): the EB-sampler, masked or uniform-state,
    over the whole window, returns it for most rows (a kept draw can be one of the other 10%, and
    what follows is then that sequence's most likely completion); with a tight bound it keeps
    fewer tokens a step, so it takes at least as many calls to stop."""
    L = 3
    joint = torch.full((K ** L,), 0.1 / (K ** L - 1), dtype=torch.float64)
    joint[17] = 0.9  # (1, 2, 2)
    process = make(kind)
    model = SamplingModel(oracle(process, joint, L), process, SCHED, "x0")
    calls = {}
    for bound in (0.01, 5.0):
        options = EntropyBoundOptions(bound=bound, t_min=0.5, t_max=1.0, stability_threshold=1,
                                      confidence_threshold=0.5)
        rec = Recorder()
        x = SAMPLER_TABLE["entropy_bound"].run(model, SamplerSpec(predictor="entropy_bound", steps=16, options=options),
                                               (64, L), generator=torch.Generator().manual_seed(0), observer=rec)
        share = float((x == torch.tensor([1, 2, 2])).all(-1).double().mean())
        assert share >= 0.6, (kind, bound, share)
        calls[bound] = rec.counts["denoiser_calls"]
    assert calls[0.01] >= calls[5.0]


def make(kind):
    return AbsorbingProcess(K) if kind == "absorbing" else UniformProcess(K)


@pytest.mark.parametrize("name,kind", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 8])
def test_one_token_is_sampled_exactly_at_any_step_count(name, kind, steps):
    """For one token every sampler's step keeps the exact marginal: chi-square, p > 1e-3, n = 6000."""
    joint = random_joint(K, 1, seed=3)
    n = 6000
    x = run(name, make(kind), joint, 1, n, steps, seed=steps)
    assert chisquare(empirical(x, 1).numpy(), (joint * n).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name,kind", EXACT)
def test_a_correlated_pair_is_reproduced_with_many_steps(name, kind):
    """Per-token updates of a correlated pair become exact as steps grow (one change at a time):
    at 128 steps the total-variation distance is below 0.04 (n = 6000: noise ~ 0.015), and at one
    step it is visibly larger, so the test can fail."""
    joint = random_joint(K, 2, seed=4)
    n = 6000
    tv = 0.5 * (empirical(run(name, make(kind), joint, 2, n, 128, 0), 2) / n - joint).abs().sum().item()
    tv1 = 0.5 * (empirical(run(name, make(kind), joint, 2, n, 1, 1), 2) / n - joint).abs().sum().item()
    assert tv < 0.04 < tv1 or (tv < 0.04 and tv1 > 2 * tv)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_kappa_one_is_ancestral_sampling_draw_for_draw(kind):
    process = make(kind)
    joint = random_joint(K, 2, seed=5)
    den = oracle(process, joint, 2)
    a = ancestral_sample(den, process, SCHED, (500, 2), steps=6, noise_removal="ancestral", eps=1e-4,
                         generator=torch.Generator().manual_seed(7))
    grid = linear_grid(6, 1e-4)
    b = psi_sample(den, process, SCHED, (500, 2), grid=grid, kappas=torch.ones(7), noise_removal="ancestral",
                   generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_the_cache_saves_calls_and_changes_nothing():
    process = AbsorbingProcess(K)
    joint = random_joint(K, 2, seed=6)
    recorder = Recorder()
    stats = recorder.counts
    # 4 sequences of 2 tokens: at most 8 of the 64 updates (+ the noise-removal call) change the batch
    ancestral_sample(oracle(process, joint, 2), process, SCHED, (4, 2), steps=64, noise_removal="ancestral",
                     generator=torch.Generator().manual_seed(0), cache=True, observer=recorder)
    assert stats["denoiser_calls"] + stats["cached_calls"] == 65 and stats["cached_calls"] >= 55
    n = 6000
    a = empirical(run("ancestral", process, joint, 2, n, 16, 11), 2)
    b = empirical(run("ancestral_cache", process, joint, 2, n, 16, 12), 2)
    assert 0.5 * (a / n - b / n).abs().sum() < 0.04


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_held_positions_never_change(kind):
    process = make(kind)
    joint = random_joint(K, 2, seed=7)
    seen = []

    def den(x_t, alpha_t):
        seen.append(x_t[:, 0].clone())
        return oracle(process, joint, 2)(x_t, alpha_t)

    mask = torch.tensor([[True, False]]).expand(300, 2)
    vals = torch.full((300, 2), 2)
    # alpha(1) > 0, so a visible token has non-zero likelihood under q and the oracle is defined
    x = ancestral_sample(den, process, LogLinear(1e-3), (300, 2), steps=5, noise_removal="ancestral", eps=1e-4,
                         fixed=(mask, vals), generator=torch.Generator().manual_seed(0))
    assert (x[:, 0] == 2).all() and all((s == 2).all() for s in seen)
    # and the free token follows the conditional p(x_1 | x_0 = 2) of the data
    cond = joint.reshape(K, K)[2] / joint.reshape(K, K)[2].sum()
    counts = torch.bincount(x[:, 1], minlength=K).double()
    assert (counts / 300 - cond).abs().max() < 0.1


def test_greedy_tail_returns_the_argmax_and_keeps_unmasked_tokens():
    proc = AbsorbingProcess(K)
    target = torch.tensor([2, 0, 1])

    def den(x_t, alpha_t):
        out = torch.full((*x_t.shape, K + 1), -1e6, dtype=torch.float64)
        out[..., :K] = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
        out[:, torch.arange(3), target] = 0.0
        return out.log_softmax(-1)

    # a grid that is only the noise-removal call: every masked token becomes the argmax
    x = psi_sample(den, proc, LogLinear(), (5, 3), grid=torch.tensor([1.0, 0.0], dtype=torch.float64),
                   noise_removal="greedy")
    assert (x == target).all()
    # tokens already unmasked stay as they are
    start = torch.tensor([[1, K, K]] * 5)
    x = psi_sample(den, proc, LogLinear(), (5, 3), grid=torch.tensor([0.5, 0.0], dtype=torch.float64),
                   noise_removal="greedy", x_init=start)
    assert (x == torch.tensor([1, 0, 1])).all()
    # ancestral_sample counts the greedy call after its `steps` updates (the papers' count)
    recorder = Recorder()
    stats = recorder.counts
    ancestral_sample(den, proc, LogLinear(), (5, 3), steps=3, noise_removal="greedy", observer=recorder)
    assert stats["denoiser_calls"] == 4


def test_nucleus_keeps_the_top_mass_and_renormalises():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(nucleus(p, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(nucleus(p, 0.81), torch.tensor([[0.5, 0.3, 0.15, 0]], dtype=torch.float64) / 0.95)
    torch.testing.assert_close(nucleus(p, 1.0), p)


@pytest.mark.parametrize("draw", ["inverse-cdf", "race"])
def test_categorical_draws_match_their_probabilities(draw):
    p = torch.tensor([0.1, 0.6, 0.0, 0.3], dtype=torch.float64)
    rows = p.log().expand(60_000, 4)
    g = torch.Generator().manual_seed(0)
    x = draw_categorical(rows, g) if draw == "inverse-cdf" else race_categorical(p.expand(60_000, 4), g)
    counts = torch.bincount(x, minlength=4).double()
    assert counts[2] == 0
    assert chisquare(counts[[0, 1, 3]].numpy(), (p[[0, 1, 3]] * 60_000).numpy()).pvalue > 1e-3
    # an excluded state (the mask) is never drawn; the rest is renormalised
    x = draw_categorical(rows, g, exclude=1)
    counts = torch.bincount(x, minlength=4).double()
    assert counts[1] == 0 and chisquare(counts[[0, 3]].numpy(), (torch.tensor([0.25, 0.75]) * 60_000).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("kappa", [1.0, 0.3, 0.0])
def test_one_step_drawn_by_components_is_the_full_mixture(kind, kappa):
    """process.sample_step (stay / draw from p / noise, per token) against the dense
    kappa q(x_s | x_t, p) + (1 - kappa) q(x_s | x_0 ~ q(x_0 | x_t, p)): chi-square per x_t, n = 20,000."""
    process = make(kind)
    S = process.num_states
    p = torch.tensor([0.5, 0.2, 0.3] + [0.0] * (S - K), dtype=torch.float64)
    a_s, a_t = torch.tensor([0.6], dtype=torch.float64), torch.tensor([0.25], dtype=torch.float64)
    n = 20_000
    for x_t in range(S):
        xt = torch.full((n, 1), x_t)
        q = process.posterior(p.expand(n, 1, S), xt, a_s, a_t)[0, 0]
        if kappa < 1:
            q_x0 = process.posterior(p.expand(n, 1, S), xt, torch.ones(1, dtype=torch.float64), a_t)
            q = kappa * q + (1 - kappa) * process.marginal(q_x0, a_s)[0, 0]
        log_p = p.clamp_min(1e-300).log().expand(n, 1, S)
        x_s = process.sample_step(log_p, xt, a_s, a_t, kappa=kappa, draw=draw_categorical,
                                  generator=torch.Generator().manual_seed(x_t))
        counts = torch.bincount(x_s.reshape(-1), minlength=S).double()
        assert (counts[q == 0] == 0).all()
        live = q > 0
        if live.sum() == 1:  # a visible token of a masked model stays
            assert counts[live] == n
            continue
        assert chisquare(counts[live].numpy(), (q[live] * n).numpy()).pvalue > 1e-3, (x_t, counts, q * n)


# --- kappa schedules and grids, with the reference's defects -------------------------------

def test_parse_kappa_reads_the_reference_strings():
    assert parse_kappa("pure-posterior") == Kappa("posterior")
    assert parse_kappa("pure-pc") == Kappa("pc")
    assert parse_kappa("max-capped-0.01") == Kappa("max-capped", 0.01)
    assert parse_kappa("max-rescale-0.5") == Kappa("max-rescale", 0.5)
    assert parse_kappa("constant-remdm-0.02") == Kappa("remdm-constant", 0.02)
    assert parse_kappa("constant-0.7") == Kappa("constant", 0.7)
    with pytest.raises(ValueError, match="kappa must lie in"):
        parse_kappa("constant-1.5")
    with pytest.raises(ValueError, match="expected one of"):
        parse_kappa("sometimes")


def test_max_rescale_uses_min_one_not_min_eta():
    """ReMDM: sigma = eta * min(1, (1 - a_s)/a_t); the papers' code uses min(eta, .) * eta."""
    a_t, a_s = torch.tensor([0.3]), torch.tensor([0.35])
    eta = 0.5
    ours = Kappa("max-rescale", eta)(a_t, a_s)
    cap = (1 - a_s) / a_t
    expect = 1 - eta * torch.clamp(cap, max=1.0) / (1 - a_s)
    reference = 1 - eta * torch.clamp(cap, max=eta) / (1 - a_s)
    torch.testing.assert_close(ours, expect.clamp(0, 1).double())
    assert not torch.allclose(ours, reference.clamp(0, 1).double())


def test_a_noise_dependent_segment_of_one_step_works():
    """The papers' code crashes when a ReMDM segment covers a single step."""
    sched = KappaSchedule(Kappa("posterior"), Kappa("max-capped", 0.1), Kappa("posterior"), high_frac=0.4,
                          middle_frac=0.2)
    alphas = SCHED(linear_grid(5, 1e-4, final_zero=False)).alpha
    k = sched.kappas(alphas)
    assert len(k) == 5 and ((k >= 0) & (k <= 1)).all() and (k < 1).sum() == 1


def _reference_grid(num_steps, c, high, mid, eps):
    n = num_steps + 1
    n_hi, n_mid = round(high * n), round(mid * n)
    return torch.cat([torch.linspace(1, c, n_hi), torch.full((n_mid,), c), torch.linspace(c, eps, n - n_hi - n_mid)])


def test_linear_constant_linear_grid_always_reaches_eps():
    eps = 1e-3
    bad = [s for s in range(1, 64) if abs(float(_reference_grid(s, 0.1, 0.2, 0.6, eps)[-1]) - eps) > 1e-9]
    assert bad, "the reference grid ends at eps for every step count tried"
    for steps in range(1, 64):
        g = linear_constant_linear_grid(steps, 0.1, eps=eps, final_zero=False)
        assert len(g) == steps + 1 and g[0] == 1.0 and abs(float(g[-1]) - eps) < 1e-12
        assert (g[1:] <= g[:-1]).all()
    ga = linear_constant_linear_grid(20, 0.5, plateau_in="alpha", schedule=LogLinear(), final_zero=False)
    assert abs(float(LogLinear()(ga).alpha[10]) - 0.5) < 1e-9


@pytest.mark.parametrize("kwargs,msg", [(dict(steps=0, plateau=0.5), "sampling.steps must be >= 1"),
                                        (dict(steps=10, plateau=1.5), "plateau must lie inside the grid"),
                                        (dict(steps=10, plateau=0.0005), "plateau must lie inside the grid")])
def test_bad_grids(kwargs, msg):
    with raises_said_as(msg):
        linear_constant_linear_grid(**kwargs)


def test_bad_sampler_settings():
    with raises_said_as("sampling.steps must be >= 1"):
        ancestral_sample(None, UniformProcess(3), LogLinear(), (1, 1), steps=0)
    with raises_said_as("sampling.noise_removal must be one of"):
        ancestral_sample(None, UniformProcess(3), LogLinear(), (1, 1), steps=2, noise_removal="sometimes")
    with pytest.raises(ValueError, match="not available for the analytic sampler"):
        analytic_sample(None, AbsorbingProcess(3), LogLinear(), (1, 1), steps=2, noise_removal="greedy")
    with pytest.raises(ValueError, match="every kappa must lie"):
        psi_sample(None, UniformProcess(3), LogLinear(), (1, 1), grid=linear_grid(2), kappas=torch.tensor([0.5, 2.0, 1.0]))


# --- guidance and semi-autoregressive generation --------------------------------------------

def test_guidance_weights_interpolate_and_extrapolate():
    from duolm.sampling import guided_denoiser

    pc = torch.tensor([[[0.7, 0.2, 0.1, 0.0]]], dtype=torch.float64)
    pu = torch.tensor([[[0.3, 0.3, 0.4, 0.0]]], dtype=torch.float64)

    def lg(p):
        return torch.where(p > 0, p.clamp_min(1e-300).log(), torch.full_like(p, -1e6))

    def c(x, a):
        return lg(pc)

    def u(x, a):
        return lg(pu)

    x, a = torch.zeros(1, 1, dtype=torch.long), torch.ones(1)
    assert guided_denoiser(c, u, 1.0) is c and guided_denoiser(c, u, 0.0) is u
    for w in (0.5, 2.0, 3.0):
        p = guided_denoiser(c, u, w)(x, a).exp()
        expect = pc[..., :3] ** w * pu[..., :3] ** (1 - w)
        torch.testing.assert_close(p[..., :3], expect / expect.sum(-1, keepdim=True))
        assert p[..., 3].item() == 0.0
    assert guided_denoiser(c, u, 3.0)(x, a).exp()[0, 0, 0] > pc[0, 0, 0]  # sharper toward the class


def test_semi_ar_extends_past_the_window_keeping_the_overlap_and_stops_at_eos():
    from duolm.sampling import semi_ar_sample

    calls = []
    counter = iter(range(1, 1000))

    def window(fixed):
        mask, vals = fixed
        calls.append(mask.clone())
        new = torch.full(mask.shape, next(counter))
        return torch.where(mask, vals, new)

    out = semi_ar_sample(window, batch=2, length=8, total_length=20, stride=3, prefix=[9, 9])
    assert out.shape == (2, 20)
    assert out[0, :2].tolist() == [9, 9] and (out[:, 2:8] == 1).all()
    assert out[0, 8:11].tolist() == [2, 2, 2] and out[0, 11:14].tolist() == [3, 3, 3]
    assert all(m[:, :5].all() and not m[:, 5:].any() for m in calls[1:])  # 8 - 3 = 5 kept each time

    def eos_window(fixed):
        mask, vals = fixed
        new = torch.full(mask.shape, 4)
        new[:, 5] = 0  # EOS in the first window
        return torch.where(mask, vals, new)

    out = semi_ar_sample(eos_window, batch=2, length=8, total_length=40, stride=4, eos_id=0, stop_at_eos=True)
    assert out.shape[1] == 8 and (out[:, 6:] == 0).all()
    with raises_said_as("sampling.stride"):
        semi_ar_sample(window, batch=1, length=8, total_length=20, stride=9)


@pytest.mark.parametrize("predictor", ["ancestral", "psi", "ancestral_cache"])
def test_seeded_generation_is_reproducible(predictor):
    from duolm.core.methods import build_method
    from duolm.data.tokenizers import CharTokenizer
    from duolm.models.dit import DiT, DiTConfig
    from duolm.sampling import Kappa, SamplerSpec
    from duolm.sampling.generate import GenerationRequest, generate

    tok = CharTokenizer()
    method = build_method("mdlm", tok.vocab_size)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=8, n_blocks=1, n_heads=2,
                        dropout=0.0))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    spec = SamplerSpec(predictor=predictor, steps=6,
                       options=PsiOptions(kappa=KappaSchedule(middle=Kappa("max-capped", 0.1))) if predictor == "psi" else None)
    runs = [generate(method, net, tok, GenerationRequest(spec, length=12, num_samples=3, batch_size=2, seed=5),
                     progress=False)
            for _ in range(2)]
    assert [s["ids"] for s in runs[0]["samples"]] == [s["ids"] for s in runs[1]["samples"]]
    other = generate(method, net, tok, GenerationRequest(spec, length=12, num_samples=3, batch_size=2, seed=6),
                     progress=False)
    assert [s["ids"] for s in other["samples"]] != [s["ids"] for s in runs[0]["samples"]]


def test_each_samplers_yaml_block_is_its_rows_settings():
    """A sampler's settings are declared once, in its SAMPLERS row: conf/sampling/default.yaml's
    block sampling.<name> holds exactly those keys, their defaults and, as comments, their help; a
    row's options build from that block, and `duolm sample --help` lists every setting."""
    import re
    from pathlib import Path

    import yaml

    import duolm.app
    from duolm.app.cli import command_help
    from duolm.sampling.registry import options_from_settings

    path = Path(duolm.app.__file__).parent / "conf" / "sampling" / "default.yaml"
    conf = yaml.safe_load(path.read_text())
    lines = path.read_text().splitlines()
    with_options = {name: e.options for name, e in SAMPLER_TABLE.items() if e.options is not None}
    assert "psi" in with_options
    help_text = command_help("sample")
    for name, options in with_options.items():
        block = conf[name]
        assert list(block) == list(options.SETTINGS)
        assert block == {k: s.default for k, s in options.SETTINGS.items()}
        start = lines.index(next(line for line in lines if line.startswith(f"{name}:")))
        comments = dict(re.match(r"\s+(\w+):\s*\S+\s*#\s*(.*)$", line).groups()
                        for line in lines[start + 1:start + 1 + len(block)])
        assert comments == {k: s.help for k, s in options.SETTINGS.items()}
        assert options_from_settings(name, block) == options()  # the YAML defaults are the type's defaults
        for key, s in options.SETTINGS.items():
            assert f"sampling.{name}.{key} ({s.default}): {s.help}" in help_text


def test_a_sampler_refuses_a_process_its_row_does_not_declare():
    from duolm.core.methods import build_method
    from duolm.sampling.registry import check_sampler

    check_sampler(SamplerSpec(predictor="ddim"), build_method("duo", 10))
    with raises_said_as("sampling.predictor=ddim samples uniform-state models, not algo=mdlm"):
        check_sampler(SamplerSpec(predictor="ddim"), build_method("mdlm", 10))
