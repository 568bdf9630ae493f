"""Multi-digit arithmetic: a + b and a * b with `digits`-digit operands; the verifier reads an integer.

Text: "123+456=" and the answer "579". The verifier accepts a completion that starts (after spaces,
and an optional "answer:") with the exact integer, followed by nothing or by a non-digit.
"""
from __future__ import annotations

import random
import re

from duolm.errors import SettingError

OPERATIONS = ("+", "*")


def records(count: int, seed: int, *, digits: int = 3, operation: str = "+") -> list[dict]:
    if operation not in OPERATIONS:
        raise SettingError(f"`arithmetic.operation` must be one of {list(OPERATIONS)}, got {operation!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 12:
        raise SettingError(f"`arithmetic.digits` must be an integer in [1, 12], got {digits!r}")
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    out = []
    for _ in range(count):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        answer = a + b if operation == "+" else a * b
        out.append({"prompt": f"{a}{operation}{b}=", "response": str(answer), "task": "arithmetic",
                    "answer": answer})
    return out


_LEADING_INT = re.compile(r"\s*(?:answer:\s*)?(-?\d+)(?!\d)", re.IGNORECASE)


def verify(answer: int, completion: str) -> float:
    m = _LEADING_INT.match(completion)
    return 1.0 if m is not None and int(m.group(1)) == answer else 0.0


__all__ = ["OPERATIONS", "records", "verify"]
