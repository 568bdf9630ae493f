"""duolm models inside EleutherAI's lm-evaluation-harness (`pip install 'duolm[lm_eval]'`).

    duolm lm-eval eval.checkpoint_path=builtin:duo-bigtxt-dcd lm_eval.tasks=[arc_easy] lm_eval.limit=100

or lm-eval's own command line with the model registered:
``python -m duolm.app.lm_eval_adapter --model duolm --model_args pretrained=<model> --tasks ...``,
or from Python, after ``import duolm.app.lm_eval_adapter`` (which registers the model name
``duolm``): ``lm_eval.simple_evaluate(model="duolm", model_args="pretrained=<model>,num_mc_samples=16", ...)``.

- ``loglikelihood``: AR models give the exact log-likelihood of the continuation; diffusion
  models the negative NELBO of the continuation's tokens with the context held clean, averaged
  over ``num_mc_samples`` draws of t (duolm.evaluation.likelihood.continuation_nelbo; its standard
  error is kept in ``last_standard_errors``). Contexts longer than the model keep their most recent
  tokens; continuations longer than the model are scored window by window.
- ``is_greedy``: AR: whether greedy decoding gives the continuation. Diffusion models have no
  single greedy path; here it is whether the denoiser's argmax at t = 1 (the continuation at
  the prior: all masks, or uniform tokens drawn with the seed) reproduces every continuation token.
- ``loglikelihood_rolling``: the same bound for a whole document after the BOS token, window by
  window.
- ``generate_until``: the model's sampler (``steps``, ``sampler``) with the context held as a prompt,
  semi-autoregressive windows when prompt + ``max_gen_toks`` is longer than the model, cut at the
  first stop string.
"""
from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from duolm.app.api import load
from duolm.core.canvas_loss import canvas_predictions
from duolm.data.tokenizers import encode_fragment
from duolm.evaluation.likelihood import continuation_nelbo
from duolm.sampling.generate import decode_text, sample_batch


@register_model("duolm")
class DuolmLM(LM):
    def __init__(self, pretrained="builtin:duo-bigtxt-dcd", num_mc_samples: int = 8, batch_size: int = 16,
                 steps: int = 64, sampler: str = "auto", seed: int = 0, device=None, semi_ar: bool = True,
                 max_gen_toks: int = 64, **_ignored):
        super().__init__()
        if device in ("cuda", "cuda:0") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's command line asks for cuda unless told otherwise
        self.model = load(pretrained, device=device) if isinstance(pretrained, str) else pretrained
        self.num_mc_samples, self.batch_size = int(num_mc_samples), int(batch_size)
        self.steps, self.sampler, self.seed = int(steps), sampler, int(seed)
        self.semi_ar = semi_ar if isinstance(semi_ar, bool) else str(semi_ar).lower() == "true"
        self.max_gen_toks = int(max_gen_toks)
        self.last_standard_errors: list[float] = []

    # --- scoring ------------------------------------------------------------------------
    def _pairs(self, requests) -> list[tuple[list[int], list[int]]]:
        tok = self.model.tokenizer
        pairs = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            pairs.append(([tok.bos_id] + encode_fragment(tok, context), encode_fragment(tok, continuation)))
        return pairs

    def _score(self, pairs) -> list[dict]:
        if any(not cont for _, cont in pairs):
            raise ValueError("lm-eval asked for the likelihood of an empty continuation")
        m = self.model
        out = continuation_nelbo(m.method, m.pretrained.backbone, pairs, length=m.length, pad_id=m.tokenizer.pad_id,
                                 num_samples=self.num_mc_samples, seed=self.seed, batch_size=self.batch_size,
                                 device=m.device)
        self.last_standard_errors = [r["se"] for r in out]
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        pairs = self._pairs(requests)
        scores = self._score(pairs)
        greedy = self._greedy(pairs)
        return [(-r["nelbo"], g) for r, g in zip(scores, greedy)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        tok = self.model.tokenizer
        pairs = [([tok.bos_id], encode_fragment(tok, req.args[0])) for req in requests]
        return [-r["nelbo"] for r in self._score(pairs)]

    @torch.no_grad()
    def _greedy(self, pairs) -> list[bool]:
        m = self.model
        method, net, L = m.method, m.pretrained.backbone, m.length
        out = []
        g = torch.Generator().manual_seed(self.seed)
        for ctx, cont in pairs:
            if len(cont) >= L:
                out.append(False)
                continue
            ids = (ctx + cont)[-L:]
            n_ctx = len(ids) - len(cont)
            x = torch.tensor([ids + [m.tokenizer.pad_id] * (L - len(ids))])
            if method.is_autoregressive:  # AR: argmax of each next-token distribution
                logits = net(x[:, :-1], None)[..., :method.vocab_size]
                pred = logits[0, n_ctx - 1:len(ids) - 1].argmax(-1)
            else:
                x_t = x.clone()
                prior = method.process.prior_sample((1, L), generator=g)
                x_t[:, n_ctx:] = prior[:, n_ctx:]
                alpha = method.schedule(torch.ones(1, 1)).alpha.float().to(m.device)
                if net.capabilities.encoder_prefix:  # the context in the encoder, the continuation's canvases after it
                    log_p = canvas_predictions(method, net, x.to(m.device), x_t.to(m.device), alpha, prompt=n_ctx)
                else:
                    log_p = method.denoise(net, x_t.to(m.device), alpha)
                pred = log_p[0, n_ctx:len(ids)].argmax(-1).cpu()
            out.append(bool((pred.cpu() == torch.tensor(cont)).all()))
        return out

    # --- generation ---------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False):
        m = self.model
        tok = m.tokenizer
        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = [tok.bos_id] + encode_fragment(tok, context)
            if len(prompt) >= m.length:
                prompt = [tok.bos_id] + prompt[-(m.length // 2 - 1):]  # the most recent context that leaves room
            total = len(prompt) + new
            if total > m.length and (not self.semi_ar or m.method.is_autoregressive):
                raise ValueError(f"lm-eval asked for {new} new tokens after a {len(prompt)}-token context, more than "
                                 f"the model's length {m.length}; pass semi_ar=true (diffusion models) or a smaller "
                                 f"max_gen_toks")
            spec = m.spec(steps=self.steps, sampler=self.sampler, prompt_ids=prompt,
                          total_length=total if total > m.length else None)
            g = torch.Generator().manual_seed(self.seed)
            ids = sample_batch(m.method, m.pretrained.backbone, spec, 1, m.length, bos_id=tok.bos_id, generator=g,
                               device=m.device, eos_id=tok.eos_id)[0].tolist()
            text = decode_text(tok, ids[len(prompt):total])
            cut = min([text.find(s) for s in until if s and s in text] or [len(text)])
            out.append(text[:cut])
        return out


if __name__ == "__main__":  # lm-eval's own command line, with the `duolm` model registered:
    # python -m duolm.app.lm_eval_adapter run --model duolm --model_args pretrained=<model> --tasks ...
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
