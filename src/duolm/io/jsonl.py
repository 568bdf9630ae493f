"""Reading JSONL files line by line, with the line named in any error."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def jsonl_rows(path) -> Iterator[tuple[str, object]]:
    """(where, value) for every non-blank line of a JSONL file: where is 'path:n', value the line's
    JSON; a line that is not JSON is a ValueError naming it."""
    with open(Path(path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None


__all__ = ["jsonl_rows"]
