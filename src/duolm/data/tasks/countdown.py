"""Countdown: reach a target from 3 or 4 numbers with + - * /, each number used exactly once.

The generator draws the numbers (1 .. `max_number`) and a random expression tree over all of them
whose value is a positive integer (exact rational arithmetic; a division that leaves a fraction is
allowed inside, as the verifier allows it), and that value is the target; the reference answer is
that expression. Text: "countdown: 3 7 25 -> 46 ="; any expression that reaches the target with
the numbers is a right answer (here "25+7*3").

The verifier (TinyZero's and d1's rule): the completion's expression, up to the first newline or
'=' (a leading "answer:" is allowed), may use digits, + - * / ( ) and spaces only; its numbers are
exactly the given ones, each once; evaluated exactly (rational arithmetic from a parse tree, never
Python's eval) it equals the target. Anything else scores 0.
"""
from __future__ import annotations

import ast
import random
from fractions import Fraction

from duolm.errors import SettingError

OPS = "+-*/"
ALLOWED = set("0123456789+-*/() ")


def _combine(a, b, op):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def random_expression(numbers: list[int], rng: random.Random) -> tuple[str, Fraction] | None:
    """A random full binary expression over all the numbers (in a random order): (text, value)."""
    items = [(str(n), Fraction(n)) for n in numbers]
    rng.shuffle(items)
    while len(items) > 1:
        i, j = sorted(rng.sample(range(len(items)), 2))
        (ta, va), (tb, vb) = items[i], items[j]
        op = rng.choice(OPS)
        v = _combine(va, vb, op)
        if v is None:
            return None
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [(f"({ta}{op}{tb})", v)]
    text, value = items[0]
    return (text[1:-1] if text.startswith("(") and text.endswith(")") else text), value


def make_problem(count: int, max_number: int, rng: random.Random, max_target: int = 1000) -> tuple[list[int], int, str]:
    if count not in (3, 4):
        raise SettingError(f"`countdown.numbers` must be 3 or 4, got {count!r}")
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        made = random_expression(numbers, rng)
        if made is None:
            continue
        text, value = made
        if value.denominator == 1 and 0 < value <= max_target:
            return numbers, int(value), text


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, na = _evaluate(node.left)
        b, nb = _evaluate(node.right)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
        v = _combine(a, b, op)
        if v is None:
            raise ZeroDivisionError
        return v, na + nb
    raise ValueError("not an arithmetic expression")


def expression_of(completion: str) -> str:
    text = completion.strip()
    if text.lower().startswith("answer:"):
        text = text[len("answer:"):]
    return text.split("\n", 1)[0].split("=", 1)[0].strip()


def verify(numbers: list[int], target: int, completion: str) -> float:
    """1.0 when the completion's expression uses exactly the given numbers, each once, and equals the target."""
    expr = expression_of(completion)
    if not expr or set(expr) - ALLOWED:
        return 0.0
    try:
        value, used = _evaluate(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return 0.0
    return 1.0 if sorted(used) == sorted(numbers) and value == target else 0.0


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """The numbers and target of a prompt this module wrote."""
    body = prompt.split(":", 1)[1].rstrip(" =")
    left, right = body.split("->")
    return [int(x) for x in left.split()], int(right)


def records(count: int, seed: int, *, numbers: int = 3, max_number: int = 25) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        nums, target, expr = make_problem(numbers, max_number, rng)
        out.append({"prompt": f"countdown: {' '.join(map(str, nums))} -> {target} =", "response": expr,
                    "task": "countdown", "numbers": nums, "target": target})
    return out


__all__ = ["expression_of", "make_problem", "parse_prompt", "records", "verify"]
