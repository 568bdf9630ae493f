"""Infilling: templates become held positions; with an exact denoiser the blanks follow the data's
conditional distribution and the held tokens never change, for every sampler that holds positions."""
import pytest
import torch
from oracles import all_sequences, random_joint
from scipy.stats import chisquare
from test_samplers import K, make, oracle, variants

from duolm.core.schedules import LogLinear
from duolm.data.tokenizers import CharTokenizer
from duolm.evaluation.likelihood import windows
from duolm.sampling import SAMPLERS, SamplerSpec, SamplingModel
from duolm.sampling.infill import parse_template


def test_a_template_holds_its_text_and_marks_the_spans_it_filled():
    tok = CharTokenizer("abcduvxyz ")
    tpl = parse_template("ab [___] c [___:2]d", tok, blank_length=3)
    assert tpl.length == 1 + 3 + 3 + 3 + 2 + 1  # BOS, "ab ", blank, " c ", blank, "d"
    mask, values = tpl.held(2, 16)
    assert mask[0].tolist() == [True] * 4 + [False] * 3 + [True] * 3 + [False] * 2 + [True] + [False] * 3
    assert values[0, 1:4].tolist() == tok.encode_fragment("ab ") and values[0, 0] == tok.bos_id
    ids = values[0].tolist()
    ids[4:7] = tok.encode("xyz")
    ids[10:12] = tok.encode("uv")
    filled = tpl.fill(ids, tok.decode)
    assert filled["text"] == "ab xyz c uvd"
    assert [(s["start"], s["end"], s["text"]) for s in filled["spans"]] == [(3, 6, "xyz"), (9, 11, "uv")]


@pytest.mark.parametrize("template,message", [
    ("no blank here", "has no blank"), ("a [___:0] b", "at least one token"), ("[___:40]", "the model's length is 16")])
def test_bad_templates_get_one_sentence(template, message):
    with pytest.raises(ValueError, match=message):
        parse_template(template, CharTokenizer(), max_length=16)


def _conditional_oracle(process, joint, L, held: dict[int, int]):
    """The exact denoiser of the data conditioned on the held tokens (a model of the conditional)."""
    seqs = all_sequences(K, L)
    keep = torch.ones(len(seqs), dtype=torch.bool)
    for i, v in held.items():
        keep &= seqs[:, i] == v
    cond = torch.where(keep, joint, torch.zeros_like(joint))
    return oracle(process, cond / cond.sum(), L), cond / cond.sum()


HOLDING = [(label, kind) for label, name, _ in variants() if SAMPLERS[name].holds_positions
           for kind in (["absorbing"] if SAMPLERS[name].reuses_output else list(SAMPLERS[name].processes))]


@pytest.mark.parametrize("name,kind", HOLDING)
def test_a_blank_follows_the_exact_conditional_and_held_tokens_never_change(name, kind):
    """L = 3 with positions 0 and 2 held: the blank at 1 follows p(x_1 | x_0, x_2) (chi-square, n = 4,000)."""
    process = make(kind)
    joint = random_joint(K, 3, seed=8)
    held = {0: 2, 2: 1}
    den, cond = _conditional_oracle(process, joint, 3, held)
    label, table_name, options = next(v for v in variants() if v[0] == name)
    # alpha(1) > 0, so the held (visible) tokens have non-zero likelihood under q and the oracle is defined
    model = SamplingModel(den, process, LogLinear(1e-3), "x0")
    spec = SamplerSpec(predictor=table_name, steps=8, noise_removal="ancestral", eps=1e-4, options=options)
    n = 4000
    mask = torch.tensor([[True, False, True]]).expand(n, 3)
    values = torch.tensor([[2, 0, 1]]).expand(n, 3)
    x = SAMPLERS[table_name].run(model, spec, (n, 3), fixed=(mask, values), generator=torch.Generator().manual_seed(1))
    assert (x[:, 0] == 2).all() and (x[:, 2] == 1).all()
    expected = cond.reshape(K, K, K)[2, :, 1]
    counts = torch.bincount(x[:, 1], minlength=K).double()
    assert chisquare(counts.numpy(), (expected / expected.sum() * n).numpy()).pvalue > 1e-3


def test_windows_cover_a_long_continuation_with_the_text_before_it():
    assert windows([0], [1, 2, 3], 8) == [([0, 1, 2, 3], 3)]
    w = windows([0, 9], list(range(1, 11)), 4)
    assert [n for _, n in w] == [3, 3, 3, 1]
    assert w[1] == ([3, 4, 5, 6], 3) and w[-1] == ([7, 8, 9, 10], 1)
    with pytest.raises(ValueError, match="at least one context token"):
        windows([], [1], 4)


def test_a_bpe_template_leaves_the_space_before_a_blank_to_the_blank():
    """GPT-2 writes "the cat sat" as the, " cat", " sat": the held "the " must not end in a lone space token."""
    from duolm.data.tokenizers import load_tokenizer

    tok = load_tokenizer("gpt2")
    tpl = parse_template("the [___:1] sat on the [___:1] mat", tok)
    held = [p.tokens for p in tpl.pieces if p.text is not None]
    assert held == [tok.encode("the"), tok.encode(" sat on the"), tok.encode(" mat")]
    ids = [tok.bos_id] + tok.encode("the cat sat on the red mat")
    assert tpl.fill(ids, tok.decode)["text"] == "the cat sat on the red mat"
    assert [s["text"] for s in tpl.fill(ids, tok.decode)["spans"]] == [" cat", " red"]
