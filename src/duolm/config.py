"""Compose the Hydra config and check it before any work starts.

Every problem becomes one ConfigError sentence that names the key and what is allowed.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from duolm.data.pipeline import BLOCK_MODES, SOURCES
from duolm.methods import ALGOS
from duolm.schedules import SCHEDULES
from duolm.sampling import NOISE_REMOVAL

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("algo", "model", "data", "noise", "sampling", "optim", "trainer", "loader")


class ConfigError(ValueError):
    pass


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in GROUPS and value and value not in group_options(key):
            raise ConfigError(f"{key}={value} is not a known {key}; choose one of {group_options(key)}")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"bad override: {first}") from None
    OmegaConf.resolve(cfg)
    validate(cfg)
    return cfg


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


def validate(cfg: DictConfig) -> None:
    _choice(cfg, "algo.name", ALGOS)
    _positive(cfg, "algo.T", minimum=0)
    if cfg.algo.get("curriculum") is not None:
        from duolm.curriculum import CurriculumSchedule

        c = cfg.algo.curriculum
        if cfg.algo.name != "duo":
            raise ConfigError(f"algo.curriculum is only for algo=duo, not {cfg.algo.name}")
        try:
            CurriculumSchedule(mode=c.mode, tau_log10_start=c.gumbel_tau_log10_start,
                               tau_log10_end=c.gumbel_tau_log10_end, start=c.start, end=c.end,
                               gamma_min=c.gamma_min, gamma_max=c.gamma_max, top_k=c.top_k)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.algo.name == "d3pm" and cfg.algo.T < 1:
        raise ConfigError(f"algo.T must be >= 1 for d3pm (a discrete-time NELBO), got {cfg.algo.T}")
    if cfg.algo.name in ("mdlm", "sedd", "ar") and cfg.algo.T != 0:
        raise ConfigError(f"algo.T must be 0 for {cfg.algo.name} (its loss is continuous-time), got {cfg.algo.T}")
    for k in ("hidden_size", "cond_dim", "n_blocks", "n_heads", "length"):
        _positive(cfg, f"model.{k}")
    if cfg.model.hidden_size % cfg.model.n_heads:
        raise ConfigError(f"model.hidden_size ({cfg.model.hidden_size}) must be divisible by "
                          f"model.n_heads ({cfg.model.n_heads})")
    if (cfg.model.hidden_size // cfg.model.n_heads) % 2:
        raise ConfigError("model.hidden_size / model.n_heads must be even (rotary embeddings rotate pairs)")
    _positive(cfg, "model.length", minimum=3)
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout must lie in [0, 1), got {cfg.model.dropout}")
    _choice(cfg, "data.source", SOURCES)
    _choice(cfg, "data.blocks", BLOCK_MODES)
    if cfg.data.source == "local" and not cfg.data.get("path"):
        raise ConfigError("data.path must name a folder of .txt files, a .jsonl file or a token-id file "
                          "when data=local")
    _choice(cfg, "noise.type", tuple(SCHEDULES))
    if not 0.0 <= cfg.noise.eps < 1.0:
        raise ConfigError(f"noise.eps must lie in [0, 1), got {cfg.noise.eps}")
    _choice(cfg, "sampling.noise_removal", ("auto", *NOISE_REMOVAL))
    _choice(cfg, "sampling.predictor", ("auto", "ancestral", "ancestral_cache", "psi", "analytic", "ar"))
    _check_sampling(cfg)
    _positive(cfg, "sampling.steps")
    _positive(cfg, "sampling.num_samples")
    _positive(cfg, "sampling.batch_size")
    _positive(cfg, "optim.lr", integer=False, minimum=0)
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    _positive(cfg, "optim.warmup_steps", minimum=0)
    _choice(cfg, "optim.schedule", ("constant", "cosine"))
    _choice(cfg, "trainer.precision", ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"))
    _choice(cfg, "trainer.strategy", ("auto", "ddp", "fsdp", "ddp_spawn", "ddp_find_unused_parameters_true"))
    _choice(cfg, "trainer.accelerator", ("auto", "cpu", "gpu", "cuda", "mps"))
    _positive(cfg, "trainer.max_steps")
    _positive(cfg, "trainer.devices")
    _positive(cfg, "trainer.num_nodes")
    _positive(cfg, "trainer.val_check_interval")
    _positive(cfg, "trainer.max_minutes", allow_none=True, integer=False, minimum=0)
    _positive(cfg, "loader.global_batch_size")
    _positive(cfg, "loader.batch_size", allow_none=True)
    _positive(cfg, "loader.eval_batch_size", allow_none=True)
    _positive(cfg, "run.checkpoint_every")
    _choice(cfg, "training.loss_precision", ("float32", "float64"))
    _positive(cfg, "eval.time_samples")
    _positive(cfg, "eval.batch_size")
    _positive(cfg, "eval.judge_batch_size")
    _positive(cfg, "eval.judge_context", allow_none=True, minimum=2)
    samples = cfg.eval.get("samples")
    for p in ([samples] if isinstance(samples, str) else list(samples or [])):
        if not Path(str(p)).is_file():
            raise ConfigError(f"eval.samples: {p} is not a file (write one with duolm sample)")
    if cfg.get("distill") is not None:
        _choice(cfg, "distill.delta_growth", ("double", "linear"))
        _choice(cfg, "distill.loss_type", ("kl-bwd", "kl-fwd"))
        _choice(cfg, "distill.teacher_from", ("weights", "ema"))
        _positive(cfg, "distill.T")
        _positive(cfg, "distill.update_teacher_every")
        if not cfg.distill.gamma_min < cfg.distill.gamma_max:
            raise ConfigError(f"distill.gamma_min ({cfg.distill.gamma_min}) must be below distill.gamma_max "
                              f"({cfg.distill.gamma_max})")
    if not 0.0 <= cfg.training.ema < 1.0:
        raise ConfigError(f"training.ema must lie in [0, 1), got {cfg.training.ema}")
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    per_device = cfg.loader.batch_size or max(1, cfg.loader.global_batch_size // world)
    if cfg.loader.global_batch_size % (per_device * world):
        raise ConfigError(f"loader.global_batch_size ({cfg.loader.global_batch_size}) must be a multiple of "
                          f"loader.batch_size x devices x nodes ({per_device} x {world})")


def resolve_predictor(predictor: str, algo: str) -> str:
    if predictor != "auto":
        return predictor
    return {"sedd": "analytic", "ar": "ar"}.get(algo, "ancestral")


def resolve_noise_removal(noise_removal: str, algo: str) -> str:
    if noise_removal != "auto":
        return noise_removal
    return "ancestral" if algo == "sedd" else "greedy"


def _check_sampling(cfg) -> None:
    from duolm.sampling import KappaSchedule, parse_kappa

    s, algo = cfg.sampling, cfg.algo.name
    predictor = resolve_predictor(s.predictor, algo)
    if s.get("guidance") is not None:
        raise ConfigError("sampling.guidance needs a class-conditional model; the text models here are "
                          "unconditional (use duolm.sampling.guided_denoiser with a conditional denoiser)")
    if s.get("total_length") is not None:
        if predictor == "ar":
            raise ConfigError("sampling.total_length is for diffusion models; AR samples up to model.length here")
        if s.total_length < cfg.model.length:
            raise ConfigError(f"sampling.total_length ({s.total_length}) must be >= model.length ({cfg.model.length})")
    if s.get("stride") is not None and not 1 <= s.stride <= cfg.model.length:
        raise ConfigError(f"sampling.stride must lie in [1, model.length={cfg.model.length}], got {s.stride}")
    if not 0.0 < s.p_nucleus <= 1.0:
        raise ConfigError(f"sampling.p_nucleus must lie in (0, 1], got {s.p_nucleus}")
    if predictor == "analytic" and algo != "sedd":
        raise ConfigError(f"sampling.predictor=analytic needs a score model (algo=sedd), not algo={algo}")
    if algo == "sedd" and predictor != "analytic":
        raise ConfigError(f"algo=sedd samples with sampling.predictor=analytic (got {s.predictor})")
    if (algo == "ar") != (predictor == "ar"):
        raise ConfigError(f"sampling.predictor=ar is for algo=ar and algo=ar samples with it (got "
                          f"sampling.predictor={s.predictor}, algo={algo})")
    if predictor == "analytic" and s.noise_removal == "greedy":
        raise ConfigError("sampling.noise_removal=greedy needs x_0 probabilities, which a score model (sedd) "
                          "does not give; use ancestral or none")
    if predictor == "ancestral_cache" and cfg.algo.time_conditioning:
        raise ConfigError("sampling.predictor=ancestral_cache reuses the denoiser output, which is only valid "
                          "for a model without time conditioning (algo=mdlm)")
    if predictor == "psi":
        _choice(cfg, "sampling.psi.time_profile", ("linear", "linear-constant-linear"))
        _choice(cfg, "sampling.psi.plateau_in", ("t", "alpha"))
        try:
            KappaSchedule(parse_kappa(s.psi.high_mode), parse_kappa(s.psi.middle_mode), parse_kappa(s.psi.low_mode),
                          s.psi.high_frac, s.psi.middle_frac)
        except ValueError as err:
            raise ConfigError(f"sampling.psi: {err}") from None
        if s.psi.time_profile == "linear-constant-linear" and s.psi.plateau_in == "t" and \
                not cfg.training.sampling_eps < s.psi.plateau < 1:
            raise ConfigError(f"sampling.psi.plateau must lie inside the grid, t in ({cfg.training.sampling_eps}, 1); "
                              f"got {s.psi.plateau}")
        if s.psi.plateau_in == "alpha" and not 0 < s.psi.plateau < 1:
            raise ConfigError(f"sampling.psi.plateau must be a signal level in (0, 1) with plateau_in=alpha, "
                              f"got {s.psi.plateau}")


def batch_plan(cfg) -> tuple[int, int, int]:
    """(per-device batch, eval batch, gradient accumulation steps) for the global batch size."""
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    per_device = cfg.loader.batch_size or max(1, cfg.loader.global_batch_size // world)
    accum = cfg.loader.global_batch_size // (per_device * world)
    return per_device, cfg.loader.eval_batch_size or per_device, accum
