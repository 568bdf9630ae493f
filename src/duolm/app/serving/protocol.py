"""OpenAI's completions and chat completions, as duolm reads and answers them.

A request body becomes a `Settings` (every field checked; a bad one is a `BadRequest`: one sentence
naming the field) and a prompt in ids; sampled ids become OpenAI's response objects and stream
chunks. The fields duolm reads:

- `prompt` (a string, or a list of one string) or `messages` (chat: the tokenizer's chat template,
  the assistant's turn opened, as SFT framed it);
- `max_tokens` (default 16, at most what the model's length leaves after the prompt), `n`, `seed`,
  `stop` (up to 4 strings: the completion ends before the first), `stream`, `top_p`, `temperature`
  (0 to 2: p(x_0 | x_t), AR's next token, sharpened to p^(1/T); 0 the argmax);
- duolm's own, at the top level (the openai client's `extra_body`): `steps`, `predictor`,
  `noise_removal`, `confidence_threshold`, `block_size` (a block model: its own block size only; a
  whole-window model with predictor=confidence: decode left to right in blocks of this many
  positions, Fast-dLLM's semi-AR) and `stream_drafts` (a whole-window model streamed: each
  denoising step's draft, as `draft` chunks, before the answer).

OpenAI fields duolm does not implement are accepted at their neutral values (`logprobs` null,
`echo` false, penalties 0, `user`) and refused otherwise, in one sentence.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

from duolm.data.instructions import has_chat_template, prompt_ids
from duolm.errors import SettingError
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.registry import checked_spec

NEUTRAL = {"logprobs": (None, False, 0), "echo": (False, None), "presence_penalty": (0, 0.0, None),
           "frequency_penalty": (0, 0.0, None), "user": None, "logit_bias": (None, {}), "best_of": (None, 1),
           "suffix": (None,), "stream_options": None, "top_logprobs": (None, 0), "max_completion_tokens": None,
           "response_format": None, "parallel_tool_calls": None, "service_tier": None, "store": None,
           "metadata": None}
COMMON = {"model", "max_tokens", "n", "seed", "stop", "stream", "top_p", "temperature", "steps", "predictor",
          "noise_removal", "confidence_threshold", "block_size", "stream_drafts"}


class BadRequest(ValueError):
    """A request the server refuses: status 400, the message names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Settings:
    prompt: list[int]
    max_tokens: int
    n: int
    seed: int | None
    stop: list[str]
    stream: bool
    spec: object
    drafts: bool = False


def _int(body: dict, key: str, default, low: int, high: int | None = None) -> int:
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        bound = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        raise BadRequest(f"{key} must be {bound}, got {v!r}", key)
    return v


def parse(body, kind: str, model) -> Settings:
    """The settings of a completions (`kind`='completion') or chat (`chat`) request body, checked against
    `model` (a loaded duolm model: method, tokenizer, config) and its server limits."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    text_key = "prompt" if kind == "completion" else "messages"
    unknown = sorted(set(body) - COMMON - {text_key} - set(NEUTRAL))
    if unknown:
        raise BadRequest(f"{unknown[0]} is not a field duolm reads (it reads {', '.join(sorted(COMMON | {text_key}))})",
                         unknown[0])
    for key, neutral in NEUTRAL.items():
        if key in body and neutral is not None and body[key] not in neutral:
            raise BadRequest(f"{key}={body[key]!r} is not supported by duolm (leave it out)", key)
    tok = model.tokenizer
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string (or a list of one string)", "prompt")
        ids = prompt_ids(tok, prompt=prompt)
    else:
        messages = body.get("messages")
        if not has_chat_template(tok):
            raise BadRequest("this model has no chat template: send a prompt to /v1/completions", "messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content",
                             "messages")
        ids = prompt_ids(tok, messages=messages)
    length = model.max_length
    room = length - len(ids)
    if room < 1:
        raise BadRequest(f"{text_key} is {len(ids)} tokens; this model reads at most {length - 1} and writes the rest",
                         text_key)
    max_tokens = _int(body, "max_tokens", min(16, room), 1)
    if max_tokens > room:
        raise BadRequest(f"max_tokens must be at most {room} (the {length} tokens this model writes, less the "
                         f"prompt's {len(ids)}), got {max_tokens}", "max_tokens")
    n = _int(body, "n", 1, 1, model.max_n)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BadRequest(f"seed must be a non-negative integer, got {seed!r}", "seed")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a string or a list of up to 4 non-empty strings", "stop")
    stream = body.get("stream", False)
    if stream not in (True, False, None):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    drafts = body.get("stream_drafts", False)
    if drafts not in (True, False, None):
        raise BadRequest(f"stream_drafts must be true or false, got {drafts!r}", "stream_drafts")
    if drafts and not stream:
        raise BadRequest("stream_drafts sends the denoising drafts of a streamed request: set stream=true too",
                         "stream_drafts")
    if drafts and (model.method.block_size or model.method.is_autoregressive):
        raise BadRequest("stream_drafts is for whole-window models; this model streams each block (token) as it is "
                         "written", "stream_drafts")
    return Settings(ids, max_tokens, n, seed, list(stop), bool(stream), _spec(body, model), bool(drafts))


def _spec(body: dict, model):
    """The sampler spec of the request: the server's default with steps, predictor, noise_removal,
    top_p and confidence_threshold replaced where given."""
    spec = model.spec
    changes = {}
    if body.get("steps") is not None:
        changes["steps"] = _int(body, "steps", spec.steps, 1, 4096)
    for key in ("predictor", "noise_removal"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise BadRequest(f"{key} must be a string, got {body[key]!r}", key)
            changes[key] = body[key]
    if body.get("top_p") is not None:
        changes["p_nucleus"] = body["top_p"]
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise BadRequest(f"temperature must be a number from 0 to 2, got {temperature!r}", "temperature")
        changes["temperature"] = float(temperature)
    predictor = changes.get("predictor", spec.predictor)
    if predictor != spec.predictor:
        changes["options"] = None
    if body.get("confidence_threshold") is not None:
        if predictor != "confidence":
            raise BadRequest("confidence_threshold is for predictor=confidence", "confidence_threshold")
        base = spec.options if isinstance(spec.options, ConfidenceOptions) and "options" not in changes \
            else ConfidenceOptions()
        changes["options"] = _checked("confidence_threshold", lambda: replace(base,
                                                                              threshold=body["confidence_threshold"]))
    if body.get("block_size") is not None:
        size = _int(body, "block_size", None, 1, model.config["length"])
        own = model.method.block_size
        if own:
            if size != own:
                raise BadRequest(f"block_size must be {own}: this model was trained with blocks of {own} (its cache "
                                 f"and masks are built for them)", "block_size")
        elif predictor != "confidence":
            raise BadRequest("block_size is for block models, or for a whole-window model with predictor=confidence "
                             "(semi-autoregressive decoding in blocks)", "block_size")
        else:
            base = changes.get("options") or (spec.options if isinstance(spec.options, ConfidenceOptions)
                                              else ConfidenceOptions())
            changes["options"] = _checked("block_size", lambda: replace(base, block_length=size))
    if not changes:
        return spec
    field = {"steps": "steps", "predictor": "predictor", "noise_removal": "noise_removal", "p_nucleus": "top_p",
             "temperature": "temperature"}
    return _checked(next(iter(field[k] for k in changes if k in field), "predictor"),
                    lambda: checked_spec(replace(spec, **changes), model.method, model.config["length"]))


def _checked(param: str, build):
    try:
        return build()
    except (SettingError, ValueError, TypeError) as err:
        text = str(err).split("; ")[0]
        for prefix in ("`SamplerSpec.", "`ConfidenceOptions."):
            text = text.replace(prefix, "`")
        raise BadRequest(text.replace("p_nucleus", "top_p").replace("`", ""), param) from None


def completion_text(tokenizer, row, prompt_length: int, max_tokens: int, stop: list[str]) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of one sampled row: its tokens after the prompt, up to
    its first EOS ('stop'), max_tokens ('length') or the first stop string ('stop')."""
    ids = [int(t) for t in row[prompt_length:prompt_length + max_tokens]]
    reason = "length"
    if tokenizer.eos_id in ids:
        ids = ids[:ids.index(tokenizer.eos_id)]
        reason = "stop"
    ids = [t for t in ids if t < tokenizer.vocab_size and t != tokenizer.bos_id]
    text = tokenizer.decode(ids)
    cuts = [text.index(s) for s in stop if s in text]
    if cuts:
        text, reason = text[:min(cuts)], "stop"
    return text, reason, len(ids)


def response(kind: str, model_name: str, choices: list[tuple[str, str]], prompt_tokens: int,
             completion_tokens: int) -> dict:
    """The whole response object of a completions or chat request."""
    rid, now = uuid.uuid4().hex[:24], int(time.time())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if kind == "completion":
        return {"id": f"cmpl-{rid}", "object": "text_completion", "created": now, "model": model_name,
                "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                            for i, (t, r) in enumerate(choices)], "usage": usage}
    return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": now, "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": r} for i, (t, r) in enumerate(choices)], "usage": usage}


class ChunkWriter:
    """The chunks of one streamed request, in OpenAI's format (one id and time for all of them)."""

    def __init__(self, kind: str, model_name: str):
        self.kind, self.model_name = kind, model_name
        self.id, self.created = uuid.uuid4().hex[:24], int(time.time())
        self.started: set[int] = set()

    def _chunk(self, choice: dict) -> dict:
        if self.kind == "completion":
            return {"id": f"cmpl-{self.id}", "object": "text_completion", "created": self.created,
                    "model": self.model_name, "choices": [{**choice, "logprobs": None}]}
        return {"id": f"chatcmpl-{self.id}", "object": "chat.completion.chunk", "created": self.created,
                "model": self.model_name, "choices": [{**choice, "logprobs": None}]}

    def __call__(self, index: int, text: str, reason: str | None = None) -> dict:
        """Choice `index`'s next piece of text, or its finish (reason)."""
        if self.kind == "completion":
            return self._chunk({"index": index, "text": text, "finish_reason": reason})
        delta = {"content": text} if text else {}
        if index not in self.started and reason is None:
            delta = {"role": "assistant", **delta}
            self.started.add(index)
        return self._chunk({"index": index, "delta": delta, "finish_reason": reason})

    def draft(self, index: int, step: int, text: str) -> dict:
        """Choice `index`'s denoising draft after `step` steps (stream_drafts), beside an empty piece
        of the answer."""
        empty = {"text": ""} if self.kind == "completion" else {"delta": {}}
        return self._chunk({"index": index, **empty, "finish_reason": None, "draft": text, "step": step})


def draft_text(tokenizer, ids: list[int], hidden: str = "_") -> str:
    """A draft's text: its tokens decoded, each position not yet a token (a mask) shown as `hidden`."""
    out, run = [], []
    for t in ids:
        if t < tokenizer.vocab_size:
            run.append(t)
            continue
        if run:
            out.append(tokenizer.decode(run))
            run = []
        out.append(hidden)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def chunks(kind: str, model_name: str, choices: list[tuple[str, str]]) -> list[dict]:
    """The stream of a finished request, in OpenAI's chunk format: per choice its text, then its finish."""
    write = ChunkWriter(kind, model_name)
    out = []
    for i, (text, reason) in enumerate(choices):
        out += [write(i, text), write(i, "", reason)]
    return out


__all__ = ["BadRequest", "ChunkWriter", "Settings", "chunks", "completion_text", "draft_text", "parse", "response"]
