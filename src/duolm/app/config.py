"""Compose the Hydra config and check it before any work starts.

Every problem becomes one ConfigError sentence that names the key and what is allowed.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from duolm.app.fields import config_message
from duolm.app.sampling_settings import sampling_settings
from duolm.checkpoints.duolm_format import LOSS_DTYPES
from duolm.core.methods import Method, build_method, methods_supporting
from duolm.core.schedules import make_schedule
from duolm.data.images import IMAGE_SOURCES, image_tokenizer
from duolm.data.pipeline import check_data
from duolm.errors import SettingError
from duolm.models.backbones import BACKBONES, backbone_config, backbone_row, build_backbone
from duolm.models.ema import check_decay
from duolm.models.hf_lm import check_shift
from duolm.sampling import SAMPLERS, check_sampler, checked_spec
from duolm.sampling.registry import options_from_settings
from duolm.sampling.request import check_conditioning, check_one_start, parse_classes, spec_from_settings
from duolm.training.curriculum import CurriculumSchedule
from duolm.training.distill import DeltaSchedule, check_settings
from duolm.training.objectives import check_curriculum, check_time_range

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("algo", "model", "data", "noise", "sampling", "optim", "trainer", "loader")


class ConfigError(ValueError):
    pass


def known_keys(overrides: list[str] | None = None) -> list[str]:
    """Every key of the config composed with the group choices among `overrides` (dotted)."""
    groups = [o for o in (overrides or []) if o.partition("=")[0] in GROUPS]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_container(hydra_compose("config", overrides=groups), resolve=False)

    def walk(node, prefix):
        for k, v in node.items():
            if k == "hydra":
                continue
            yield f"{prefix}{k}"
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")

    return sorted(walk(cfg, ""))


def _unknown_keys(overrides: list[str]) -> str | None:
    """One sentence for the first override whose key the config does not have, with the nearest keys."""
    try:
        keys = known_keys(overrides)
    except Exception:  # noqa: BLE001 - a bad group choice: reported by the caller
        return None
    for o in overrides:
        key = o.partition("=")[0]
        if key.startswith(("+", "~")) or key in keys or key in GROUPS:
            continue
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(near)}?" if near else " (duolm config prints every key)"
        return f"{key} is not a known key{hint}"
    return None


# keys whose values are free text or paths: a shell strips the quotes around
# `sampling.infill='the [___] sat'`, so duolm quotes these values for Hydra's grammar itself
FREE_TEXT_KEYS = ("sampling.infill", "sampling.prefix", "sampling.chat", "sampling.output", "eval.checkpoint_path", "eval.output",
                  "eval.scoring_model", "eval.mauve_texts", "eval.inception_weights", "eval.judge", "data.path",
                  "data.valid_path", "data.cache_dir", "run.dir", "lm_eval.output", "lm_eval.include_path",
                  "convert.output", "hub.repo", "hub.message", "plot.output")


def stray_words(overrides: list[str]) -> str | None:
    """One sentence for words that are not key=value: most often the rest of a value whose quotes the
    shell removed (sampling.prefix=the old man arrives as three words), with the quoting that works."""
    for i, o in enumerate(overrides):
        if "=" in o or o.startswith(("+", "~")):
            continue
        j = i
        while j < len(overrides) and "=" not in overrides[j]:
            j += 1
        words = overrides[i:j]
        if i and overrides[i - 1].partition("=")[0] in FREE_TEXT_KEYS:
            key, _, first = overrides[i - 1].partition("=")
            whole = " ".join([first, *words])
            return (f"{key}: {' '.join(words)!r} arrived as separate words after {key}={first} (the shell splits an "
                    f"unquoted value at its spaces); quote the whole value: \"{key}={whole}\"")
        return f"{o!r} is not key=value; every setting is written key=value (duolm config prints every key)"
    return None


def hydra_quoted(value: str) -> str:
    """`value` as one single-quoted Hydra string that parses back to exactly `value` (quotes and the
    backslashes before them escaped, `${` kept literal)."""
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return "'" + out.replace("${", "\\${") + "'"


def literal_texts(cfg) -> dict[str, str]:
    """A user's text is text: the free-text values that hold `${` as written (the command line's
    quoting escaped it), read before the config is resolved, after which OmegaConf would take them
    for interpolations at their next access."""
    values = {key: OmegaConf.select(cfg, key, default=None) for key in FREE_TEXT_KEYS}
    return {key: v for key, v in values.items() if isinstance(v, str) and "${" in v}


def shell_safe(override: str) -> str:
    """A free-text key's value quoted for Hydra, unless it is already quoted or null."""
    key, eq, value = override.partition("=")
    if not eq or key.lstrip("+~") not in FREE_TEXT_KEYS or value == "null":
        return override
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":  # quoted already: `${` stays text
        inner = re.sub(r"(?<!\\)\$\{", r"\\${", value[1:-1])
        return f"{key}={value[0]}{inner}{value[-1]}"
    return f"{key}={hydra_quoted(value)}"


def _syntax_error(overrides: list[str]) -> str | None:
    """One sentence for the first override Hydra's grammar cannot read, with how to quote it."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except Exception:  # noqa: BLE001 - Hydra's grammar errors have several types
            key, _, value = o.partition("=")
            return (f"{key}: the value {value!r} is not valid override syntax (Hydra reads [ ] {{ }} ( ) , = quotes and "
                    f"spaces as grammar); quote the value inside the shell's quotes, as \"{key}='...'\"")
    return None


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed, resolved and validated config (see compose_components for what validation built)."""
    return compose_components(overrides)[0]


def compose_components(overrides: list[str] | None = None, *,
                       model_from_checkpoint: bool = False) -> tuple[DictConfig, "Components"]:
    """(config, what validate built). model_from_checkpoint: the command reads a trained model
    (sample, eval, convert), so the sampler is checked against it once loaded, not against the
    config's algo and model."""
    stray = stray_words(overrides or [])
    if stray:
        raise ConfigError(stray)
    overrides = [shell_safe(o) for o in overrides or []]
    given = []
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key == "given":
            raise ConfigError("given is set by duolm (the keys on the command line); it cannot be overridden")
        if key.startswith("hydra."):
            raise ConfigError(f"{key}: duolm does not use Hydra's own settings; the run folder is run.dir")
        if key in GROUPS and value and value not in group_options(key):
            raise ConfigError(f"{key}={value} is not a known {key}; choose one of {group_options(key)}")
        given.append(key)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        unknown = _syntax_error(overrides) or _unknown_keys(overrides)
        if unknown:
            raise ConfigError(unknown) from None
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"bad override: {first}") from None
    _check_backbone_data(cfg)  # before resolving: an image network's length is the image's
    texts = literal_texts(cfg)
    OmegaConf.resolve(cfg)
    for key, value in texts.items():  # escaped again: OmegaConf would read `${` as an interpolation
        OmegaConf.update(cfg, key, value.replace("${", "\\${"), merge=False)
    cfg.given = sorted(set(given))
    return cfg, validate(cfg, model_from_checkpoint=model_from_checkpoint)


def _choice(cfg, key, allowed):
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def _positive(cfg, key, allow_none=False, integer=True, minimum=1):
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind} >= {minimum}, got {value!r}")


@dataclass
class Components:
    """What `validate` built from the config, handed to the run. The vocabulary is known only once
    the tokenizer has loaded, so the method and the network's shape are finished by `method()` and
    `backbone_config()`; everything that can fail was already checked here."""

    schedule: object
    algo: dict                                   # name, T, time_conditioning: what a checkpoint records
    loss_dtype: torch.dtype
    sampling_eps: float
    backbone: object                             # DiTConfig or UNetConfig; vocab_size is a placeholder
                                                 # until backbone_config()
    curriculum: object | None = None             # duolm.training.curriculum.CurriculumSchedule, or None when off
    delta: object | None = None                  # duolm.training.distill.DeltaSchedule (DCD runs)
    batch: tuple[int, int, int] = (1, 1, 1)      # per-device batch, eval batch, accumulation steps
    num_classes: int = 0                         # > 0: class-conditional training (image data with labels)
    class_dropout: float = 0.0                   # the share of labels replaced by the null label
    fused_loss: bool = True                      # duolm.core.chunked_loss (False: the straightforward loss)

    def method(self, vocab_size: int) -> Method:
        m = build_method(self.algo["name"], vocab_size, schedule=self.schedule, num_steps=self.algo["T"],
                         time_conditioning=self.algo["time_conditioning"], loss_dtype=self.loss_dtype,
                         sampling_eps=self.sampling_eps, fused=self.fused_loss,
                         block_size=self.algo.get("block_size"))
        return m

    def backbone_config(self, method: Method):
        causal = {"causal": method.causal} if backbone_row(self.backbone.type).causal_option else {}
        return replace(self.backbone, vocab_size=method.model_vocab_size, **causal)


def _built(key_hint: str, build):
    """build(), with its ValueError turned into the one-sentence ConfigError (the message names the key)."""
    try:
        return build()
    except SettingError as err:  # the library's own terms, said in config keys
        raise ConfigError(config_message(err)) from None
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if "." in msg.split(" ", 1)[0] or key_hint in msg else f"{key_hint}: {msg}") from None


def validate(cfg: DictConfig, *, model_from_checkpoint: bool = False) -> Components:
    """Check every value before work starts and build what the run needs from them, once: one
    piece per config group, in the order a run uses them."""
    parts, probe = _method_parts(cfg)
    _check_modality(cfg, parts)
    # what the method needs of the network (AR: causal; blocks: block-causal), from its row
    _built("model", lambda: probe.check_backbone(backbone_row(cfg.model.get("type", "dit")).capabilities))
    _check_mask_input(cfg, probe)
    parts.backbone = _built("model", lambda: _backbone_placeholder(cfg, parts.num_classes, probe.causal))
    _check_data(cfg)
    _check_places(cfg)
    _check_sampling(cfg, probe, model_known=not model_from_checkpoint, num_classes=parts.num_classes)
    _check_optim(cfg)
    _check_trainer(cfg)
    _check_loader(cfg)
    _check_eval(cfg)
    _check_rl(cfg)
    _check_serve(cfg)
    parts.delta = _delta_schedule(cfg)
    parts.batch = batch_plan(cfg)
    return parts


def _method_parts(cfg) -> tuple[Components, Method]:
    """noise, algo and training: the schedule, the method's settings and the curriculum, with a
    probe method (a 2-token vocabulary: the real one comes with the tokenizer) that ran the
    method's own checks."""
    schedule = _built("noise", lambda: make_schedule(cfg.noise.type, cfg.noise.eps))
    _choice(cfg, "training.loss_precision", ("float32", "float64"))
    _choice(cfg, "training.fused_loss", (True, False))
    _built("training.ema", lambda: check_decay(cfg.training.ema))
    algo = {"name": cfg.algo.name, "T": cfg.algo.T, "time_conditioning": cfg.algo.time_conditioning}
    if cfg.algo.get("block_size") is not None:  # recorded only when set: whole-sequence configs stay as they were
        algo["block_size"] = cfg.algo.block_size
    clip = cfg.algo.get("clip_min"), cfg.algo.get("clip_max")
    if clip != (None, None):
        if None in clip:
            raise ConfigError("algo.clip_min and algo.clip_max are set together (both null: the full range)")
        algo["clip_min"], algo["clip_max"] = clip
    parts = Components(schedule=schedule, algo=algo, sampling_eps=cfg.training.sampling_eps,
                       loss_dtype=LOSS_DTYPES[cfg.training.loss_precision],
                       backbone=None, fused_loss=cfg.training.get("fused_loss", True))
    probe = _built("algo", lambda: parts.method(2))
    c = cfg.algo.get("curriculum")
    if c is not None:
        if not probe.supports.curriculum:
            raise ConfigError(f"algo.curriculum is only for algo={'|'.join(methods_supporting('curriculum'))}, "
                              f"not {cfg.algo.name}")
        curriculum = _built("algo.curriculum", lambda: CurriculumSchedule(
            mode=c.mode, tau_log10_start=c.gumbel_tau_log10_start, tau_log10_end=c.gumbel_tau_log10_end,
            start=c.start, end=c.end, gamma_min=c.gamma_min, gamma_max=c.gamma_max, top_k=c.top_k))
        parts.curriculum = curriculum if curriculum.mode != "none" else None
    if "clip_min" in algo:
        _built("algo", lambda: check_time_range(probe, algo["clip_min"], algo["clip_max"]))
        if parts.curriculum is not None:
            raise ConfigError("algo.clip_min/clip_max need algo.curriculum.mode=none (the curriculum draws its own "
                              "times); algo=duo_base is Duo without it")
    if probe.block_size is not None:
        if parts.curriculum is not None:
            _built("algo", lambda: check_curriculum(probe))
        length = cfg.model.get("length")
        if isinstance(length, int):
            _built("algo", lambda: probe.num_blocks(length))
    return parts, probe


def _check_data(cfg) -> None:
    """The data group's values that need no file (image sources: _check_modality, with the shape)."""
    _positive(cfg, "model.length", minimum=3)
    if not is_image_data(cfg):
        _built("data", lambda: check_data(cfg.data.source, cfg.data.blocks, bool(cfg.data.get("streaming"))))
    vf = cfg.data.get("valid_fraction")
    if vf is not None and (isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1):
        raise ConfigError(f"data.valid_fraction must lie in (0, 1), got {vf!r}")
    if cfg.data.source == "local" and not cfg.data.get("path"):
        raise ConfigError("data.path must name a folder of .txt files, a .jsonl file or a token-id file "
                          "when data=local")
    _positive(cfg, "data.num_proc", allow_none=True)
    if cfg.model.get("type") == "hf":  # a pretrained LM: its tokenizer, and options that need the whole sequence
        blocks = cfg.algo.get("block_size") is not None
        _built("model.shift", lambda: check_shift(cfg.model.get("shift") is True, causal=cfg.algo.name == "ar",
                                                  blocks=blocks))
        if not is_image_data(cfg) and cfg.data.tokenizer != cfg.model.pretrained:
            raise ConfigError(f"model=hf reads text in its pretrained model's tokenizer: set "
                              f"data.tokenizer={cfg.model.pretrained} (it is {cfg.data.tokenizer})")


def _check_places(cfg) -> None:
    """Where a command reads and writes: run.dir a folder, sampling.output a file, eval.samples files."""
    if Path(str(cfg.run.dir)).expanduser().is_file():
        raise ConfigError(f"run.dir: {cfg.run.dir} is a file; name a folder (it holds checkpoints, logs and the model)")
    _positive(cfg, "run.checkpoint_every")
    out = cfg.sampling.get("output")
    if out and Path(str(out)).expanduser().is_dir():
        raise ConfigError(f"sampling.output: {out} is a folder; name the JSON file to write")
    samples = cfg.eval.get("samples")
    for p in ([samples] if isinstance(samples, str) else list(samples or [])):
        if not Path(str(p)).is_file():
            raise ConfigError(f"eval.samples: {p} is not a file (write one with duolm sample)")


def _check_optim(cfg) -> None:
    _positive(cfg, "optim.lr", integer=False, minimum=0)
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    _positive(cfg, "optim.warmup_steps", minimum=0)
    _choice(cfg, "optim.schedule", ("constant", "cosine"))


def _check_trainer(cfg) -> None:
    _choice(cfg, "trainer.precision", ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"))
    _choice(cfg, "trainer.strategy", ("auto", "ddp", "fsdp", "ddp_spawn", "ddp_find_unused_parameters_true"))
    _choice(cfg, "trainer.accelerator", ("auto", "cpu", "gpu", "cuda", "mps"))
    _choice(cfg, "trainer.compile", (True, False))
    for key in ("trainer.max_steps", "trainer.devices", "trainer.num_nodes", "trainer.val_check_interval"):
        _positive(cfg, key)
    _positive(cfg, "trainer.max_minutes", allow_none=True, integer=False, minimum=0)


def _check_loader(cfg) -> None:
    _positive(cfg, "loader.global_batch_size")
    _positive(cfg, "loader.batch_size", allow_none=True)
    _positive(cfg, "loader.eval_batch_size", allow_none=True)
    _positive(cfg, "loader.num_workers", minimum=0)
    _positive(cfg, "loader.prefetch_factor")
    _choice(cfg, "loader.pin_memory", ("auto", True, False))


def _check_eval(cfg) -> None:
    """eval, lm_eval and hub: the evaluation and sharing commands' settings (and what a run reports at its end)."""
    _choice(cfg, "run.final_validation", (True, False))
    _choice(cfg, "run.final_samples", (True, False))
    _choice(cfg, "eval.image_features", ("classifier", "inception"))
    for key in ("eval.time_samples", "eval.batch_size", "eval.judge_batch_size", "lm_eval.num_mc_samples",
                "lm_eval.batch_size", "lm_eval.steps"):
        _positive(cfg, key)
    _positive(cfg, "eval.judge_context", allow_none=True, minimum=2)
    _choice(cfg, "hub.private", (True, False))


def _check_rl(cfg) -> None:
    """rl: duolm rl's settings (which estimator fits the model is checked once the model is loaded, and the
    prompts per step against the devices by duolm rl itself: other commands run on other device counts)."""
    if cfg.get("rl") is None:
        return
    for key in ("rl.steps", "rl.prompts_per_step", "rl.group", "rl.elbo_samples", "rl.iterations", "rl.eval_every"):
        _positive(cfg, key)
    if cfg.rl.group < 2:
        raise ConfigError(f"rl.group must be >= 2 (advantages are relative to the group), got {cfg.rl.group}")
    _positive(cfg, "rl.valid_size", allow_none=True)
    for key in ("rl.warmup_steps", "rl.reference_sync"):
        _positive(cfg, key, minimum=0)
    for key in ("rl.clip", "rl.beta", "rl.weight_decay", "rl.gradient_clip", "rl.lr"):
        _positive(cfg, key, integer=False, minimum=0)
    if cfg.rl.lr <= 0 or cfg.rl.clip <= 0:
        raise ConfigError(f"rl.lr and rl.clip must be > 0, got {cfg.rl.lr} and {cfg.rl.clip}")
    p = cfg.rl.diffu_grpo_prompt_mask
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ConfigError(f"rl.diffu_grpo_prompt_mask must be a number in [0, 1), got {p!r}")
    _positive(cfg, "rl.accuracy_threshold", integer=False, minimum=float("-inf"))
    _choice(cfg, "rl.estimator", ("auto", "exact", "elbo", "diffu_grpo"))
    _choice(cfg, "rl.advantage_scale", ("std", "none"))


def _check_serve(cfg) -> None:
    """serve: duolm serve's settings."""
    if cfg.get("serve") is None:
        return
    for key in ("serve.max_batch_rows", "serve.max_queue", "serve.max_n"):
        _positive(cfg, key)
    _positive(cfg, "serve.port", minimum=0)
    _choice(cfg, "serve.continuous", (True, False))
    _positive(cfg, "serve.max_length", allow_none=True, minimum=2)
    if cfg.serve.port > 65535:
        raise ConfigError(f"serve.port must be a port number from 0 to 65535, got {cfg.serve.port}")
    _positive(cfg, "serve.batch_wait_ms", integer=False, minimum=0)
    _positive(cfg, "serve.request_timeout", integer=False, minimum=0)
    if cfg.serve.request_timeout <= 0:
        raise ConfigError(f"serve.request_timeout must be > 0 seconds, got {cfg.serve.request_timeout}")
    if cfg.serve.max_n > cfg.serve.max_batch_rows:
        raise ConfigError(f"serve.max_n ({cfg.serve.max_n}) must be at most serve.max_batch_rows "
                          f"({cfg.serve.max_batch_rows}): a request's rows share one batch")


def _delta_schedule(cfg):
    """distill: DCD's step schedule (None: not a distillation config)."""
    d = cfg.get("distill")
    if d is None:
        return None
    _built("distill", lambda: check_settings(d.loss_type, d.teacher_from, d.gamma_min, d.gamma_max))
    return _built("distill", lambda: DeltaSchedule(
        num_steps=d.T, update_every=d.update_teacher_every, growth=d.delta_growth, linear_min=d.linear_min,
        linear_max=d.linear_max, max_steps=cfg.trainer.max_steps))


def is_image_data(cfg) -> bool:
    """The one answer to "are these data images?": the data group says so (data.modality)."""
    return cfg.data.get("modality") == "image"


def _check_backbone_data(cfg) -> None:
    """The network reads the kind of data the data group gives (the backbone table's row says which)."""
    row = BACKBONES.get(cfg.model.get("type", "dit"))  # an unknown type: validate names it
    if row is not None and ("image" if is_image_data(cfg) else "text") not in row.data:
        raise ConfigError(f"model={cfg.model.name} is an image network; it needs image data (data=digits, mnist "
                          f"or cifar10), not data={cfg.data.name}")


def _check_mask_input(cfg, probe) -> None:
    """model.mask_input=embedding marks the absorbing state, the last id: it needs a masked process."""
    if cfg.model.get("mask_input", "gray") != "embedding":
        return
    process = probe.process
    if process is None or process.mask_id is None or process.mask_id != process.num_states - 1:
        raise ConfigError(f"model.mask_input=embedding marks the mask state of a masked process (algo=mdlm); "
                          f"algo={cfg.algo.name} has no mask state")


def _check_modality(cfg, parts) -> None:
    """Image data with an image-sized model, text with a text model; the classes of image data."""
    kind = cfg.model.get("type", "dit")
    row = _built("model", lambda: backbone_row(kind))
    if not row.relaxed_inputs and parts.curriculum is not None:
        raise ConfigError(f"algo={cfg.algo.name} trains with Duo's curriculum, whose relaxed inputs the {kind} does not "
                          f"read; use algo=duo_base (as the papers' CIFAR-10 runs do) or algo.curriculum.mode=none")
    if not is_image_data(cfg):
        return
    d = cfg.data
    for key in ("levels", "channels", "image_size", "num_classes"):
        _positive(cfg, f"data.{key}", minimum=0 if key == "num_classes" else (2 if key == "levels" else 1))
    if d.levels > 256:
        raise ConfigError(f"data.levels must be at most 256 (8-bit pixels), got {d.levels}")
    length = d.channels * d.image_size ** 2
    if cfg.model.length != length:
        raise ConfigError(f"model.length ({cfg.model.length}) must equal the image's pixel count, data.channels x "
                          f"data.image_size^2 = {length}; train image data with model=unet-cpu or model=unet")
    if cfg.algo.name == "ar":
        raise ConfigError("algo=ar does not train on images here: its sequences start with a BOS token, which pixel "
                          "sequences do not have; use algo=duo_base or algo=mdlm")
    _choice(cfg, "data.flip", (True, False))
    _choice(cfg, "data.source", tuple(IMAGE_SOURCES))
    _built("data", lambda: image_tokenizer(d.source, d.levels, d.num_classes))
    p = cfg.training.get("class_dropout", 0.1)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ConfigError(f"training.class_dropout must lie in [0, 1), got {p!r}")
    parts.num_classes, parts.class_dropout = int(d.num_classes), float(p) if d.num_classes else 0.0


def _backbone_placeholder(cfg, num_classes: int, causal: bool):
    """The network's config from cfg.model (and the image's shape), with a placeholder vocabulary."""
    m = OmegaConf.to_container(cfg.model, resolve=True)
    kind = m.pop("type", "dit")
    m.pop("name", None)
    m.pop("length", None)
    row = backbone_row(kind)
    if kind == "hf" and m.get("shift") == "auto":  # measured (benchmarks/adaptation.py): on for whole-sequence diffusion
        m["shift"] = not causal and cfg.algo.get("block_size") is None
    if row.complete is not None:
        m = row.complete(m)
    shape = {"channels": cfg.data.channels, "image_size": cfg.data.image_size} if row.image_shaped else {}
    config = backbone_config({**m, "type": kind, "vocab_size": 2, "num_classes": num_classes, **shape,
                              **({"causal": causal} if row.causal_option else {})})
    with torch.device("meta"):  # the layers' own checks (GroupNorm's channel split, heads), without memory
        build_backbone(config)
    return config


def batch_plan(cfg) -> tuple[int, int, int]:
    """(per-device batch, eval batch, gradient accumulation steps) for the global batch size."""
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    per_device = cfg.loader.batch_size or max(1, cfg.loader.global_batch_size // world)
    if cfg.loader.global_batch_size % (per_device * world):
        raise ConfigError(f"loader.global_batch_size ({cfg.loader.global_batch_size}) must be a multiple of "
                          f"loader.batch_size x devices x nodes ({per_device} x {world})")
    accum = cfg.loader.global_batch_size // (per_device * world)
    return per_device, cfg.loader.eval_batch_size or per_device, accum


def _check_sampling(cfg, method, *, model_known: bool, num_classes: int = 0) -> None:
    """The sampler spec's and the sampler table's checks. model_known=False (sample, eval, convert):
    only what needs no model; the rest is checked against the checkpoint once it is loaded."""
    s = cfg.sampling
    g = s.get("guidance")
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float))):
        raise ConfigError(f"sampling.guidance must be a number (a classifier-free guidance weight), got {g!r}")
    _built("sampling.classes", lambda: parse_classes(s.get("classes")))
    if s.get("infill") is not None and not isinstance(s.infill, str):
        raise ConfigError(f"sampling.infill must be a template string such as \"the [___] sat\", got {s.infill!r}")
    tr = s.get("trajectory", 0)
    if not isinstance(tr, bool) and (not isinstance(tr, int) or tr < 0):
        raise ConfigError(f"sampling.trajectory must be true (every step), false, or a number of steps >= 0, got {tr!r}")
    _choice(cfg, "sampling.trajectory_predictions", (True, False))
    for key in ("sampling.blank_length", "sampling.num_samples", "sampling.batch_size"):
        _positive(cfg, key)
    if model_known:
        _built("sampling", lambda: check_conditioning(g, s.get("classes"), num_classes))

    for name, row in SAMPLERS.items():  # every sampler's block, chosen or not: a bad value is refused either way
        if row.options is not None:
            _built(f"sampling.{name}", lambda name=name: options_from_settings(name, s))
            given = [k for k in cfg.get("given", []) if k.startswith(f"sampling.{name}.")]
            if given and s.predictor != name:
                raise ConfigError(f"{given[0]} applies to sampling.predictor={name}, not {s.predictor}: set "
                                  f"sampling.predictor={name} or drop {given[0]}")

    def check():
        # the prefix is tokenized when the tokenizer has loaded; its length is checked then
        settings = sampling_settings(s)
        check_one_start(settings)
        start = (0,) if settings.get("prefix") or settings.get("chat") else None  # a stand-in: it must hold tokens
        spec = spec_from_settings(settings, eps=method.sampling_eps, prefix=start)
        if not model_known:
            check_sampler(replace(spec, prefix=None))
            return
        checked_spec(spec, method, cfg.model.length)

    _built("sampling.psi", check)

