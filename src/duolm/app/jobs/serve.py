"""duolm serve: an OpenAI-compatible server (uvicorn) over the model at eval.checkpoint_path."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from duolm.app.config import ConfigError
from duolm.app.fields import config_message
from duolm.app.loading import load_for_eval, model_path
from duolm.app.sampling_settings import sampling_settings
from duolm.sampling.request import request_from_settings


def _draining_server():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, whose SIGTERM / SIGINT finish the open requests and then end the command with
        exit status 0 (uvicorn itself raises the signal again once drained, which kills the process)."""

        stopped_by = None

        def handle_exit(self, sig, frame):
            self.stopped_by = signal.Signals(sig).name
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return DrainingServer


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
    length = pre.config["length"]
    # a block model writes block by block with its cache, past its training length if asked
    longest = cfg.serve.max_length or (4 * length if pre.method.block_size else length)
    if longest > length and not pre.method.block_size:
        raise ConfigError(f"serve.max_length={longest}: a {pre.method.name} model without blocks writes at most its "
                          f"length, {length} tokens")
    return ServedModel(name, pre.method, pre.backbone, pre.tokenizer, pre.config, spec, max_n=cfg.serve.max_n,
                       max_length=longest), device


def cmd_serve(cfg, parts):
    try:
        import uvicorn

        from duolm.app.serving.server import build_app
    except ImportError as err:
        raise ValueError(f"duolm serve needs the serve extra: pip install 'duolm[serve]' ({err.name} is missing)") \
            from None
    DrainingServer = _draining_server()
    model, device = served_model(cfg)
    s = cfg.serve
    app = build_app(model, max_batch_rows=s.max_batch_rows, max_queue=s.max_queue, request_timeout=s.request_timeout,
                    batch_wait_s=s.batch_wait_ms / 1000, device=device, continuous=s.continuous)
    print(f"duolm serve: {model.name} ({model.method.name}, length {model.config['length']}, sampler "
          f"{model.spec.predictor} {model.spec.steps} steps) on http://{s.host}:{s.port}/v1 | "
          f"{'continuous batching' if app.state.engine.continuous else 'whole batches'} of up to "
          f"{s.max_batch_rows} rows, queue {s.max_queue} | Ctrl-C or SIGTERM finishes what it holds, then exits",
          file=sys.stderr, flush=True)
    server = DrainingServer(uvicorn.Config(app, host=s.host, port=s.port, log_level="warning",
                                           timeout_graceful_shutdown=s.request_timeout))
    server.run()
    if server.stopped_by:
        print(f"duolm serve: stopped by {server.stopped_by} after answering what it held", file=sys.stderr)
    return 0
