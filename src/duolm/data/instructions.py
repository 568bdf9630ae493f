"""Instruction data for supervised fine-tuning: prompt / response records, read, rendered and tokenized.

A JSONL file of records, one per line, in either form:

    {"prompt": "What is 2 + 2?", "response": "4"}
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}

A ``prompt`` / ``response`` record is used as written: the sequence is [BOS] prompt response [EOS].
A ``messages`` record is formatted with the tokenizer's chat template: the prompt is every message
but the last, with the assistant's turn opened (``add_generation_prompt``), and the response is the
last message, which must be the assistant's; the [EOS] after it is the tokenizer's end of turn for
an instruction-tuned model (SmolLM2's <|im_end|>). Generation renders a conversation the same way
(``chat_prompt``), so what a model is trained on and what it is asked match token for token.

Tokenizing prompt and response apart keeps the boundary exact (the prompt's last token is never
merged with the response's first), which is how the store knows which positions to hold clean.
"""
from __future__ import annotations

import json
from pathlib import Path

from duolm.errors import SettingError
from duolm.io.jsonl import jsonl_rows


def is_instruction_file(path: Path, text_field: str = "text") -> bool:
    """Whether a .jsonl file holds instruction records: its first record has `messages`, or both
    `prompt` and `response`, and no `text_field`."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False  # the text reader names the line
                return isinstance(row, dict) and text_field not in row and (
                    "messages" in row or ("prompt" in row and "response" in row))
    return False


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: every message needs a 'role' and a 'content' string, got "
                             f"{json.dumps(m)[:60]}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message is the response to learn and must be the assistant's, "
                         f"not {messages[-1]['role']!r}")


def iter_records(path: Path):
    """The records of an instruction JSONL file, each checked, with its line named in any error."""
    for where, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with 'prompt' and 'response' or 'messages'")
        if "messages" in row:
            _check_messages(row["messages"], where)
            yield {"messages": row["messages"], "where": where}
        elif "prompt" in row and "response" in row:
            if not (isinstance(row["prompt"], str) and isinstance(row["response"], str)):
                raise ValueError(f"{where}: 'prompt' and 'response' must be strings")
            yield {"prompt": row["prompt"], "response": row["response"], "where": where}
        else:
            raise ValueError(f"{where}: an instruction record needs 'prompt' and 'response', or 'messages'")


def has_chat_template(tokenizer) -> bool:
    tok = getattr(tokenizer, "tok", None)
    return tok is not None and bool(getattr(tok, "chat_template", None))


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The conversation as the tokenizer's chat template writes it, the assistant's turn opened."""
    if not has_chat_template(tokenizer):
        raise SettingError(f"conversations are formatted with the tokenizer's chat template; `load_tokenizer.spec`="
                         f"{getattr(tokenizer, 'name', '?')} has none (use prompt/response records or an "
                         f"instruction-tuned model's tokenizer)")
    text = tokenizer.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # the store frames every record with [BOS]; a template that opens with the BOS token (SmolLM2's
    # <|im_start|>) would have it twice, so [BOS] + this text is the template's ids exactly
    bos = tokenizer.tok.convert_ids_to_tokens(tokenizer.bos_id)
    return text[len(bos):] if bos and text.startswith(bos) else text


def render(record: dict, tokenizer) -> tuple[str, str]:
    """(prompt text, response text) of one record."""
    if "messages" in record:
        try:
            return chat_prompt(tokenizer, record["messages"][:-1]), record["messages"][-1]["content"]
        except ValueError as err:
            raise SettingError(f"{record.get('where', '`build_splits.path`')}: {err}") from None
    return record["prompt"], record["response"]


def encode_records(records, tokenizer, *, num_proc: int | None = None, batch_size: int = 256):
    """Yield batches (flat ids, lengths, prompt lengths) of instruction records, in order: each
    record's prompt ids then its response ids, one after the other in `flat`."""
    from duolm.data.encode import encode_documents

    def texts():
        for r in records:
            yield from render(r, tokenizer)

    # an even batch of texts is whole (prompt, response) pairs
    for flat, lengths in encode_documents(texts(), tokenizer, num_proc=num_proc, batch_size=2 * batch_size):
        pairs = lengths.reshape(-1, 2)
        yield flat, pairs.sum(1), pairs[:, 0].copy()


def prompt_ids(tokenizer, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
    """The ids a response is generated after: [BOS] + the prompt, as the store frames a record."""
    text = chat_prompt(tokenizer, messages) if messages is not None else prompt
    return [tokenizer.bos_id] + tokenizer.encode(text)


def reply_ids(tokenizer, ids, prompt_length: int) -> list[int]:
    """A generated response: the ids after the prompt, cut at the first end of text (EOS, or the
    tokenizer's own end-of-turn token where it has another)."""
    ends = {tokenizer.eos_id, getattr(getattr(tokenizer, "tok", None), "eos_token_id", None)} - {None}
    reply = [int(t) for t in list(ids)[prompt_length:]]
    cut = next((i for i, t in enumerate(reply) if t in ends), len(reply))
    return reply[:cut]
