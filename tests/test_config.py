"""Every config preset composes, validates and instantiates; bad values get one clear sentence."""
import pytest
import torch
from said_as import raises_said_as

from duolm.app.config import ConfigError, compose, compose_components, group_options
from duolm.core.methods import build_method
from duolm.models.backbones import build_backbone

VOCAB = {"char": 28, "gpt2": 50257, "bert-base-uncased": 30522, "smollm2": 49152}


@pytest.mark.parametrize("group", ["algo", "model", "data", "noise", "sampling", "optim", "trainer", "loader"])
def test_every_preset_instantiates(group, tmp_path):
    for option in group_options(group):
        extra = ["data.path=/somewhere"] if (group, option) == ("data", "local") else []
        if group == "model" and option.startswith("unet"):
            extra = ["data=cifar10", "algo=duo_base"]  # an image network needs image data (and no curriculum)
        if group == "data" and option in ("digits", "mnist", "cifar10"):
            extra = ["model=unet-cpu", "algo=duo_base"]
        if group == "model" and option == "hf":  # a pretrained LM reads its own tokenizer (SmolLM2's, offline)
            extra = ["data.tokenizer=smollm2"]
        vocab = None
        if group == "model" and option == "diffusion_gemma":  # a folder of its own (a tiny random one here)
            from diffusion_gemma_tiny import VOCAB as DG_VOCAB
            from diffusion_gemma_tiny import tiny_folder

            dg = tiny_folder(tmp_path / "dg")
            extra = [f"model.pretrained={dg}", f"data.tokenizer={dg}", "algo.curriculum.mode=none",
                     "algo.block_size=8"]
            vocab = DG_VOCAB
        cfg, parts = compose_components([f"{group}={option}", *extra])
        method = parts.method(vocab or VOCAB.get(cfg.data.tokenizer, cfg.data.get("levels") or 100))
        with torch.device("meta"):  # the papers' sizes, without allocating them
            net = build_backbone(parts.backbone_config(method))
        assert net.config.vocab_size == method.model_vocab_size


def test_papers_overrides_work():
    cfg = compose(["algo=duo", "model=small", "data=openwebtext-split", "loader.batch_size=32",
                   "trainer.max_steps=1000"])
    assert (cfg.model.n_blocks, cfg.model.hidden_size, cfg.model.n_heads) == (12, 768, 12)
    assert cfg.data.tokenizer == "gpt2" and cfg.loader.batch_size == 32
    cfg = compose(["algo=duo_base", "sampling.steps=8", "sampling.noise_removal=greedy",
                   "eval.checkpoint_path=/x"])
    assert cfg.sampling.steps == 8


@pytest.mark.parametrize("override,message", [
    ("algo=foo", "algo=foo is not a known algo; choose one of"),
    ("data=nowhere", "data=nowhere is not a known data"),
    ("noise.type=sqrt", "noise.type must be one of"),
    ("sampling.noise_removal=maybe", "sampling.noise_removal must be one of"),
    ("sampling.steps=0", "sampling.steps must be an integer >= 1"),
    ("model.n_heads=5", "model.hidden_size (192) must be divisible by model.n_heads (5)"),
    ("loader.batch_size=7", "loader.global_batch_size (64) must be a multiple"),
    ("trainer.precision=fp8", "trainer.precision must be one of"),
    ("training.fused_loss=maybe", "training.fused_loss must be one of"),
    ("algo=d3pm algo.T=0", "algo.T must be >= 1 for d3pm"),
    ("optim.lr=-1", "optim.lr must be"),
    ("nonsense.key=1", "nonsense.key is not a known key (duolm config prints every key)"),
    ("sampling.stepz=3", "sampling.stepz is not a known key; did you mean sampling.steps"),
])
def test_bad_values_get_one_sentence(override, message):
    with pytest.raises(ConfigError) as err:
        compose(override.split())
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_local_data_needs_a_path():
    with pytest.raises(ConfigError, match="data.path must name"):
        compose(["data=local"])


def test_method_table_names_the_key():
    with raises_said_as("algo.name must be one of"):
        build_method("gpt", 10)


@pytest.mark.parametrize("override,expected", [
    ("sampling.prefix=Cost is ${x}", ("prefix", "Cost is ${x}")),
    ("sampling.prefix='price: ${5}'", ("prefix", "price: ${5}")),
    ('sampling.prefix="a ${b} c"', ("prefix", "a ${b} c")),
    ("sampling.infill=the [___] costs ${3}", ("infill", "the [___] costs ${3}")),
    ("sampling.chat=What is ${HOME}?", ("chat", "What is ${HOME}?")),
])
def test_a_users_text_is_text_even_with_dollar_braces(override, expected):
    """`${` inside a free-text value is the user's text, not an OmegaConf interpolation, however the
    shell passed it (bare, single- or double-quoted), and it stays text at every later access."""
    cfg = compose([override])
    key, value = expected
    assert cfg.sampling[key] == value and cfg.sampling.get(key) == value


def test_every_sampler_block_is_checked_and_a_setting_that_cannot_apply_says_so():
    with pytest.raises(ConfigError, match=r"^sampling.confidence.threshold must be a probability in \[0, 1\], got 7$"):
        compose(["sampling.predictor=ancestral", "sampling.confidence.threshold=7"])
    with pytest.raises(ConfigError, match=r"^sampling.psi.plateau applies to sampling.predictor=psi, not ancestral: "
                                          r"set sampling.predictor=psi or drop sampling.psi.plateau$"):
        compose(["sampling.predictor=ancestral", "sampling.psi.plateau=0.3"])
    assert compose(["sampling.predictor=psi", "sampling.psi.plateau=0.3"]).sampling.psi.plateau == 0.3
