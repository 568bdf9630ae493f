"""duolm serve: an OpenAI-compatible server (uvicorn) over the model at eval.checkpoint_path."""
from __future__ import annotations

import sys
from pathlib import Path

from duolm.app.config import ConfigError
from duolm.app.fields import config_message
from duolm.app.loading import load_for_eval, model_path
from duolm.app.sampling_settings import sampling_settings
from duolm.sampling.request import request_from_settings


def served_model(cfg):
    """The loaded model with its default sampler (sampling.*, checked against it) and its name."""
    from duolm.app.serving.server import ServedModel

    pre, device = load_for_eval(cfg)
    settings = {k: v for k, v in sampling_settings(cfg.sampling).items() if k not in ("prefix", "chat", "infill")}
    try:
        spec = request_from_settings(settings, method=pre.method, tokenizer=pre.tokenizer,
                                     length=pre.config["length"]).spec
    except ValueError as err:
        raise ConfigError(f"{config_message(err)} (the model at {model_path(cfg)} is {pre.method.name}, length "
                          f"{pre.config['length']})") from None
    name = cfg.serve.model_name or Path(str(model_path(cfg))).name.replace("builtin:", "")
    pre.backbone.eval()
    return ServedModel(name, pre.method, pre.backbone, pre.tokenizer, pre.config, spec, max_n=cfg.serve.max_n), device


def cmd_serve(cfg, parts):
    try:
        import uvicorn

        from duolm.app.serving.server import build_app
    except ImportError as err:
        raise ValueError(f"duolm serve needs the serve extra: pip install 'duolm[serve]' ({err.name} is missing)") \
            from None
    model, device = served_model(cfg)
    s = cfg.serve
    app = build_app(model, max_batch_rows=s.max_batch_rows, max_queue=s.max_queue, request_timeout=s.request_timeout,
                    batch_wait_s=s.batch_wait_ms / 1000, device=device)
    print(f"duolm serve: {model.name} ({model.method.name}, length {model.config['length']}, sampler "
          f"{model.spec.predictor} {model.spec.steps} steps) on http://{s.host}:{s.port}/v1 | batches of up to "
          f"{s.max_batch_rows} rows, queue {s.max_queue} | Ctrl-C or SIGTERM finishes what it holds, then exits",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=s.host, port=s.port, log_level="warning", timeout_graceful_shutdown=s.request_timeout)
    return 0
