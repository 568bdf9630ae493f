"""The papers' checkpoint formats, read without the papers' code and without running pickled code.

``duolm.checkpoints.loading.load_pretrained`` is the one door; it hands these formats here:
- the raw Lightning ``.ckpt`` of s-sahoo/duo and kuleshov-group/mdlm (Duo, MDLM, SEDD, AR): the
  DiT's state under ``backbone.``, the EMA as an unnamed ``shadow_params`` list in parameter
  order (buffers excluded), and a pickled OmegaConf config and tokenizer. It is read with a
  restricted unpickler: tensors and plain containers are rebuilt, every other class becomes an
  inert record of its pickled state (never constructed, never called), and anything that would
  call a function (``os.system`` and the like) is refused.
- the Hugging Face layout of the Duo models (``s-sahoo/duo``, ``s-sahoo/duo-distilled``):
  config.json with the DiT's ``config`` and ``vocab_size`` plus model.safetensors;
- MDLM's Hugging Face model (``kuleshov-group/mdlm-owt``): config.json with ``model_type: mdlm``
  plus weights whose keys start with ``backbone.``.
- BD3-LM's checkpoints (kuleshov-group/bd3lms, ``kuleshov-group/bd3lm-owt-block_size{4,8,16}``):
  the same Lightning layout (``algo.name: bd3lm``, the block size at the config's top level, the
  clipped training range as ``sampling_eps_min/max``), and its Hugging Face folders
  (``model_type: bd3lm``; the weights under ``backbone.``, already the EMA). Both load as
  ``mdlm`` with ``block_size`` and no time conditioning (BD3-LM feeds sigma = 0 always).
- the Psi-samplers paper's CIFAR-10 Lightning checkpoints (``jdeschena/duo2-cifar10``): the same
  Lightning layout around their image UNet (duolm.models.unet), 256 pixel levels (257 states for
  MDLM), class-conditional with 10 classes plus the null label.
Algo, size and vocabulary are read from the file and checked; ``algo`` overrides what the file
does not say (the weights alone cannot tell MDLM from SEDD). ``load_lightning_checkpoint`` reads
any Lightning file this way, duolm's own run checkpoints included.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from duolm.checkpoints.duolm_format import FORMAT, Pretrained, method_from_config, strip_prefix
from duolm.core.methods import same_model
from duolm.data.tokenizers import PixelTokenizer, load_tokenizer
from duolm.errors import SettingError
from duolm.models.dit import DiT, DiTConfig
from duolm.models.unet import UNet, UNetConfig

_SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "int", "float", "str", "bytes", "bytearray",
                  "complex", "bool", "slice", "range", "object"}
_CALLABLE_OK = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
                ("builtins", "frozenset"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
                ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"), ("builtins", "range"),
                ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "object")}


class OpaqueObject:
    """Stand-in for a pickled object of a class we do not import (OmegaConf nodes, tokenizers)."""

    def __init__(self, *args, **kwargs):
        self._args = args
        self._state = None

    def __setstate__(self, state):
        self._state = state

    def __repr__(self):
        return f"<opaque {type(self).__qualname__}>"


def _opaque_class(module: str, name: str):
    return type(name, (OpaqueObject,), {"__module__": f"opaque.{module}", "__qualname__": f"{module}.{name}"})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        root = module.split(".")[0]
        torch_ok = ((module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"))
                    or (module == "torch" and (name.endswith("Storage") or name in ("Size", "device", "dtype")))
                    or (module == "torch.nn.parameter" and name == "Parameter")
                    or (module == "torch.storage" and name.endswith("Storage")))
        numpy_ok = root == "numpy" and name in ("dtype", "ndarray", "_reconstruct", "scalar")
        if torch_ok or numpy_ok or (module, name) in _CALLABLE_OK:
            return super().find_class(module, name)
        if root == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if root in ("os", "subprocess", "sys", "posix", "nt", "shutil", "importlib", "runpy", "builtins", "pty",
                    "socket", "code", "codeop", "pickle", "marshal", "types", "functools", "operator"):
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a checkpoint may not call it")
        return _opaque_class(module, name)


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    UnpicklingError = pickle.UnpicklingError


def load_lightning_checkpoint(path) -> dict:
    """torch.load of a Lightning checkpoint without executing pickled code (see module docstring)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or another format)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - fall back to the restricted unpickler for pickled configs
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None


def plain(obj):
    """Turn OmegaConf's pickled node tree (as opaque records) and containers into plain Python."""
    if isinstance(obj, OpaqueObject):
        st = obj._state
        if isinstance(st, dict):
            if "_content" in st:
                return plain(st["_content"])
            if "_val" in st:
                return plain(st["_val"])
            return {k: plain(v) for k, v in st.items() if not k.startswith("_")}
        return None
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _dit_config_from_state(state: dict, n_heads: int | None, cond_dim_default: int = 128) -> DiTConfig:
    try:
        V, H = state["vocab_embed.embedding"].shape
    except KeyError:
        raise ValueError("the weights have no vocab_embed.embedding: not a DiT of the papers") from None
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    causal = "sigma_map.mlp.0.weight" not in state
    cond = cond_dim_default if causal else state["sigma_map.mlp.0.weight"].shape[0]
    if n_heads is None:
        n_heads = max(1, H // 64)  # the papers use 64-dimensional heads
    return DiTConfig(vocab_size=V, hidden_size=H, cond_dim=cond, n_blocks=len(blocks), n_heads=n_heads,
                     dropout=0.0, causal=causal)


def _build(state: dict, *, algo: str, noise: dict, tokenizer_spec, n_heads: int | None, length: int,
           source: str, settings: dict | None = None) -> Pretrained:
    """settings: algo entries the file fixes (block_size, time_conditioning, clip_min/clip_max);
    the rest are the method table's defaults."""
    state = {k: v.float() for k, v in state.items() if k != "rotary_emb.inv_freq"}
    cfg = _dit_config_from_state(state, n_heads)
    tokenizer = load_tokenizer(tokenizer_spec)
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    if settings.get("block_size") == length:  # one block: the whole-sequence model
        del settings["block_size"]
    if "block_size" in settings and length % settings["block_size"]:
        raise ValueError(f"{source}: block size {settings['block_size']} does not divide the model length {length}")
    method = method_from_config({"name": algo, **settings}, noise, tokenizer.vocab_size)
    algo_cfg = {"name": algo, "T": method.num_steps, "time_conditioning": method.time_conditioning,
                **{k: v for k, v in settings.items() if k != "time_conditioning"}}
    expected = method.model_vocab_size
    if cfg.causal != method.causal:
        raise ValueError(f"{source}: the weights are {'causal (AR)' if cfg.causal else 'a diffusion DiT'}, "
                         f"but algo={algo} was given")
    if cfg.vocab_size not in (expected, expected + (1 if algo == "ar" else 0)):
        raise ValueError(f"{source}: the network has {cfg.vocab_size} outputs, but algo={algo} with the "
                         f"{tokenizer_spec!r} tokenizer ({tokenizer.vocab_size} tokens) needs {expected}")
    net = DiT(cfg)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: missing keys {sorted(missing)[:4]}, unexpected keys {sorted(unexpected)[:4]}")
    config = {"format": FORMAT, "algo": algo_cfg, "model": cfg.to_dict(), "noise": noise,
              "tokenizer": tokenizer.to_dict(), "length": length, "source": source}
    return Pretrained(net.eval(), method, tokenizer, config)


def _check_shapes(state: dict, shadow: list, names: list[str], source: str):
    if len(shadow) != len(names):
        raise ValueError(f"{source}: the EMA has {len(shadow)} tensors but the network has {len(names)} parameters")
    for n, s in zip(names, shadow):
        if tuple(s.shape) != tuple(state[n].shape):
            raise ValueError(f"{source}: EMA tensor for {n} has shape {tuple(s.shape)}, expected "
                             f"{tuple(state[n].shape)}")


def _with_ema(state: dict, shadow: list, probe: torch.nn.Module, source: str) -> dict:
    """The state with each parameter replaced by its EMA (the papers keep it as a list in parameter order)."""
    names = [n for n, _ in probe.named_parameters()]
    _check_shapes(state, shadow, names, source)
    state = dict(state)
    for n, s in zip(names, shadow):
        state[n] = s
    return state


def _unet_from_lightning(state: dict, ema, conf: dict, *, algo: str, noise: dict, source: str) -> Pretrained:
    """A CIFAR-10 (or any image) UNet checkpoint of the papers: shape from the pickled config, the
    class count from the label embedding, 256 pixel levels."""
    m, d = conf.get("model") or {}, conf.get("data") or {}
    pixels = int(m.get("size") or d.get("size") or 1024)   # the papers' `size` is H x W
    image_size = int(round(pixels ** 0.5))
    channels = int(m.get("input_channels", 3))
    num_classes = state["cond_map.embedding_table.weight"].shape[0] - 1 if "cond_map.embedding_table.weight" in state \
        else 0
    tokenizer = PixelTokenizer(256, channels, image_size, num_classes)
    method = method_from_config({"name": algo}, noise, tokenizer.vocab_size)
    try:
        cfg = UNetConfig(vocab_size=method.model_vocab_size, channels=channels, image_size=image_size,
                         ch=int(m.get("ch", 128)), num_res_blocks=int(m.get("num_res_blocks", 2)),
                         ch_mult=list(m.get("ch_mult", [1, 2, 2, 2])), attn_scale=int(m.get("scale_count_to_put_attn", 1)),
                         dropout=0.0, skip_rescale=bool(m.get("skip_rescale", True)),
                         time_embed_dim=int(m.get("time_embed_dim", m.get("ch", 128))),
                         time_scale_factor=float(m.get("time_scale_factor", 1000)), num_classes=num_classes,
                         fix_logistic=bool(m.get("fix_logistic", False)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: the checkpoint's model config does not describe a UNet ({err})") from None
    net = UNet(cfg)
    state = {k: v.float() for k, v in state.items()}
    if ema is not None:
        state = _with_ema(state, ema["shadow_params"], net, source)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
        raise ValueError(f"{source}: the UNet weights do not fit the config the checkpoint records "
                         f"({first[0].strip()})") from None
    algo_cfg = {"name": algo, "T": method.num_steps, "time_conditioning": method.time_conditioning}
    config = {"format": FORMAT, "algo": algo_cfg, "model": cfg.to_dict(), "noise": noise,
              "tokenizer": tokenizer.to_dict(), "length": tokenizer.length, "source": source,
              "data": "cifar10" if (channels, image_size) == (3, 32) else None}
    return Pretrained(net.eval(), method, tokenizer, config)


def from_lightning(ckpt: dict, source: str, *, algo: str | None = None, use_ema: bool = True, tokenizer="gpt2",
                   n_heads=None, length: int | None = None) -> Pretrained:
    """The model in a loaded Lightning checkpoint of s-sahoo/duo or kuleshov-group/mdlm."""
    if "state_dict" not in ckpt:
        raise ValueError(f"{source}: no 'state_dict' in the checkpoint")
    state = strip_prefix(ckpt["state_dict"], "backbone.")
    if not state:
        raise ValueError(f"{source}: no 'backbone.' weights in the state_dict")
    hp = plain(ckpt.get("hyper_parameters", {})) or {}
    conf = hp.get("config") or {}
    file_algo = (conf.get("algo") or {}).get("name")
    if file_algo == "distillation":
        file_algo = "duo"
    settings = {}
    if file_algo == "bd3lm":
        file_algo, settings = "mdlm", _bd3lm_settings(conf, ckpt)
    if algo and file_algo and not same_model(algo, file_algo):
        raise ValueError(f"{source} holds a {file_algo} model, but algo={algo} was asked")
    algo = algo or file_algo
    if algo is None:
        raise SettingError(f"{source}: the checkpoint does not say its algo; pass `load_pretrained.algo`=duo|mdlm|sedd|ar")
    model = conf.get("model") or {}
    noise = {"type": _noise_name((conf.get("noise") or {}).get("type", "log-linear")), "eps": 1e-3}
    tok = ((conf.get("data") or {}).get("tokenizer_name_or_path")) or tokenizer
    if "temb_modules.0.weight" in state:  # the Psi-samplers paper's image UNet
        return _unet_from_lightning(state, ckpt.get("ema") if use_ema else None, conf, algo=algo, noise=noise,
                                    source=source)
    if use_ema and ckpt.get("ema") is not None:
        probe = DiT(_dit_config_from_state({k: v for k, v in state.items()}, model.get("n_heads") or n_heads))
        state = _with_ema(state, ckpt["ema"]["shadow_params"], probe, source)
    return _build(state, algo=algo, noise=noise, tokenizer_spec=tok, n_heads=model.get("n_heads") or n_heads,
                  length=length or model.get("length", 1024), source=source, settings=settings)


def _noise_name(name: str) -> str:
    """The papers' spellings of a schedule (BD3-LM writes 'loglinear') as duolm's."""
    return {"loglinear": "log-linear"}.get(name, name)


def _bd3lm_settings(conf: dict, ckpt: dict) -> dict:
    """What a BD3-LM Lightning checkpoint fixes beyond MDLM: its block size, no time conditioning
    (unless its config turned it on), and the clipped training range its variance search chose."""
    algo = conf.get("algo") or {}
    lo, hi = (ckpt.get(k, (ckpt.get("state_dict") or {}).get(k)) for k in ("sampling_eps_min", "sampling_eps_max"))
    out = {"block_size": int(conf["block_size"]) if conf.get("block_size") else None,
           "time_conditioning": bool(algo.get("time_conditioning", False))}
    return {**out, **_clip_range(lo, hi)}


def _clip_range(lo, hi) -> dict:
    """BD3-LM's clipped training range as duolm's algo.clip_min/clip_max, where it is not the full
    [1e-3, 1] (a range that is the full one records nothing)."""
    lo, hi = (None if v is None else float(v) for v in (lo, hi))
    if lo is None or hi is None or (abs(lo - 1e-3) < 1e-9 and hi >= 1.0):
        return {}
    return {"clip_min": lo, "clip_max": min(hi, 1.0)}


def _read_weights(d: Path) -> dict:
    from safetensors.torch import load_file

    if (d / "model.safetensors").exists():
        try:
            return load_file(d / "model.safetensors")
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{d / 'model.safetensors'}: cannot read the weights ({err})") from None
    if (d / "pytorch_model.bin").exists():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{d}: no model.safetensors or pytorch_model.bin")


def from_hub_directory(d: Path, config: dict, *, algo=None, tokenizer="gpt2", n_heads=None,
                       length=None) -> Pretrained:
    """A Hugging Face layout of the papers' models: config.json (already read) and the weights."""
    cfg_path = d / "config.json"
    state = _read_weights(d)
    if config.get("model_type") == "mdlm":  # kuleshov-group/mdlm-owt
        state = strip_prefix(state, "backbone.")
        a = algo or "mdlm"
        noise = {"type": "log-linear", "eps": 1e-3}
        return _build(state, algo=a, noise=noise, tokenizer_spec=tokenizer, n_heads=config.get("n_heads", n_heads),
                      length=length or config.get("model_length", 1024), source=str(d))
    if config.get("model_type") == "bd3lm":  # kuleshov-group/bd3lm-owt-block_size{4,8,16}: EMA weights
        state = strip_prefix(state, "backbone.")
        if algo is not None and algo != "mdlm":
            raise ValueError(f"{cfg_path} holds a BD3-LM (masked block diffusion) model, but algo={algo} was asked")
        settings = {"block_size": config.get("block_size"),
                    "time_conditioning": bool(config.get("time_conditioning", False)),
                    **_clip_range(config.get("sampling_eps_min"), config.get("sampling_eps_max"))}
        return _build(state, algo="mdlm", noise={"type": "log-linear", "eps": 1e-3}, tokenizer_spec=tokenizer,
                      n_heads=config.get("n_heads", n_heads), length=length or config.get("model_length", 1024),
                      source=str(d), settings=settings)
    if "config" in config and isinstance(config["config"], dict):  # s-sahoo/duo (PyTorchModelHubMixin DIT)
        conf = config["config"]
        file_algo = (conf.get("algo") or {}).get("name")
        if file_algo == "distillation":
            file_algo = "duo"
        a = algo or file_algo or "duo"
        model = conf.get("model") or {}
        noise = {"type": _noise_name((conf.get("noise") or {}).get("type", "log-linear")), "eps": 1e-3}
        tok = (conf.get("data") or {}).get("tokenizer_name_or_path") or tokenizer
        return _build(state, algo=a, noise=noise, tokenizer_spec=tok, n_heads=model.get("n_heads", n_heads),
                      length=length or model.get("length", 1024), source=str(d))
    raise ValueError(f"{cfg_path}: not a duolm, Duo, MDLM or BD3-LM (Hugging Face) checkpoint")
