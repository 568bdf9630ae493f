"""The prompts and rewards of `duolm rl`: a task's records and verifier, or a JSONL file and reward
functions named `module:function`.

A reward function follows TRL's convention, so functions written for TRL's GRPOTrainer work here:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float]: ...

`columns` holds every other field of the prompts' records, one list entry per completion (a record's
`answer` arrives as `answer=[...]`). Several functions are summed. A completion counts as correct
(the logged accuracy) when the task's verifier accepts it, or, with reward functions, when its
summed reward reaches rl.accuracy_threshold.
"""
from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from duolm.data.instructions import prompt_ids
from duolm.data.tasks import TASKS, task_splits
from duolm.io.jsonl import jsonl_rows


def load_reward(name: str) -> Callable:
    """The function `module:function` (the current folder is importable, as for a script)."""
    module_name, sep, attr = str(name).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"rl.reward: {name!r} is not module:function (for instance my_rewards:exact_match)")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"rl.reward: cannot import {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"rl.reward: {module_name} has no function {attr!r}")
    return fn


def read_prompt_records(path) -> list[dict]:
    """The records of a prompts JSONL file: each an object with a `prompt` string or a `messages`
    list (the conversation so far), and any fields its rewards read."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"rl.prompts: {p} does not exist")
    out = []
    try:
        for where, row in jsonl_rows(p):
            if not isinstance(row, dict) or not (isinstance(row.get("prompt"), str)
                                                 or isinstance(row.get("messages"), list)):
                raise ValueError(f"{where} needs a 'prompt' string or a 'messages' list")
            out.append(row)
    except ValueError as err:
        raise ValueError(f"rl.prompts: {err}") from None
    if not out:
        raise ValueError(f"rl.prompts: {p} holds no records")
    return out


def encode_prompt(tokenizer, record: dict) -> list[int]:
    """A record's prompt as ids, framed as supervised fine-tuning framed it ([BOS] prompt, or the chat
    template with the assistant's turn opened)."""
    if "messages" in record:
        return prompt_ids(tokenizer, messages=record["messages"])
    return prompt_ids(tokenizer, prompt=record["prompt"])


@dataclass
class RewardSet:
    """How completions are scored: a task's verifier, or reward functions summed."""

    task: str | None
    functions: list[Callable]
    names: list[str]
    accuracy_threshold: float = 1.0

    def describe(self) -> str:
        return f"the {self.task} verifier" if self.task else " + ".join(self.names)

    def __call__(self, records: list[dict], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(rewards, correct) of each completion, records[i] being completion i's prompt record."""
        if self.task is not None:
            verify = TASKS[self.task].verify
            reward = torch.tensor([float(verify(r, c)) for r, c in zip(records, completions)], dtype=torch.float64)
            return reward, reward >= 1.0
        prompts = [r.get("prompt") or json.dumps(r.get("messages")) for r in records]
        columns = {k: [r.get(k) for r in records] for k in sorted({k for r in records for k in r} - {"prompt"})}
        total = torch.zeros(len(completions), dtype=torch.float64)
        for fn, name in zip(self.functions, self.names):
            values = fn(prompts=prompts, completions=completions, **columns)
            try:
                values = torch.as_tensor([float(v if v is not None else 0.0) for v in values], dtype=torch.float64)
            except (TypeError, ValueError):
                raise ValueError(f"rl.reward: {name} must return one number per completion") from None
            if values.shape != total.shape:
                raise ValueError(f"rl.reward: {name} returned {values.numel()} rewards for {len(completions)} "
                                 f"completions")
            total += values
        return total, total >= self.accuracy_threshold


def prompts_and_rewards(cfg) -> tuple[list[dict], list[dict], RewardSet]:
    """(training records, held-out records, rewards) from the rl group and data=<task>: rl.prompts and
    rl.valid_prompts files, or the task's train and validation splits; rl.reward functions, or the
    task's verifier (a file of task records, e.g. written by duolm.data.tasks, keeps it)."""
    r = cfg.rl
    task = cfg.data.get("task") is not None and cfg.data.source in TASKS
    names = list(r.reward) if OmegaConf.is_list(r.reward) else ([r.reward] if r.reward else [])
    functions = [load_reward(n) for n in names]
    if r.prompts:
        train = read_prompt_records(r.prompts)
        valid = read_prompt_records(r.valid_prompts) if r.valid_prompts else []
    elif task:
        train, valid = task_splits(cfg.data.source, OmegaConf.to_container(cfg.data.task, resolve=True))
    else:
        raise ValueError(f"duolm rl needs prompts: rl.prompts=<a JSONL of records> with rl.reward=<module:function>, "
                         f"or data=<a task: {'|'.join(sorted(TASKS))}>")
    if not functions:
        kinds = {rec.get("task") for rec in train}
        known = kinds.pop() if len(kinds) == 1 else None
        if known not in TASKS:
            raise ValueError("rl.reward: give a reward function (module:function); the prompts are not one task's "
                             "records, so no verifier applies")
        rewards = RewardSet(known, [], [], r.accuracy_threshold)
    else:
        rewards = RewardSet(None, functions, names, r.accuracy_threshold)
    if r.valid_size:
        valid = valid[: r.valid_size]
    return train, valid, rewards


__all__ = ["RewardSet", "encode_prompt", "load_reward", "prompts_and_rewards", "read_prompt_records"]
