"""Sudoku with a unique solution: a generator with a difficulty knob, and a verifier.

A puzzle of size n (4: 2 x 2 boxes, as d1 uses; 9: 3 x 3 boxes) is made from a random solved grid
(backtracking over shuffled digits, so every grid is reachable) by clearing cells in a random order,
each clearing kept only while the puzzle still has exactly one solution (a solver that stops at the
second), until `blanks` cells are clear or no further cell can be cleared. `blanks` is the
difficulty knob: more blanks, fewer givens, more search. Text: the rows, digits with '.' for a blank,
separated by spaces ("sudoku 4x4: 1.3. .4.. ..2. 3..4 ="); the answer is the solved rows in the same
form ("1234 3412 2143 4321"): every character is in the `puzzle` tokenizer's alphabet.

The verifier accepts a completion whose first n*n digits (whitespace and row separators ignored; any
other character before them is a format error) form a valid grid that keeps every given: with a
unique solution, that is the solution.
"""
from __future__ import annotations

import random

from duolm.errors import SettingError

SIZES = {4: 2, 9: 3}


def check_size(size: int) -> int:
    if size not in SIZES:
        raise SettingError(f"`sudoku.size` must be one of {sorted(SIZES)}, got {size!r}")
    return SIZES[size]


def _candidates(grid: list[int], i: int, n: int, box: int) -> set[int]:
    r, c = divmod(i, n)
    used = {grid[r * n + k] for k in range(n)} | {grid[k * n + c] for k in range(n)}
    br, bc = r - r % box, c - c % box
    used |= {grid[(br + a) * n + bc + b] for a in range(box) for b in range(box)}
    return set(range(1, n + 1)) - used


def count_solutions(grid: list[int], n: int, limit: int = 2) -> int:
    """How many ways the blanks (0) of `grid` complete to a valid grid, counting up to `limit`."""
    box = check_size(n)
    grid = list(grid)
    blanks = [i for i, v in enumerate(grid) if v == 0]

    def search(k: int) -> int:
        if k == len(blanks):
            return 1
        # the most constrained blank next: the search stays small at 9 x 9
        best, options = None, None
        for j in range(k, len(blanks)):
            cand = _candidates(grid, blanks[j], n, box)
            if options is None or len(cand) < len(options):
                best, options = j, cand
                if len(cand) <= 1:
                    break
        blanks[k], blanks[best] = blanks[best], blanks[k]
        i, total = blanks[k], 0
        for v in sorted(options):
            grid[i] = v
            total += search(k + 1)
            if total >= limit:
                break
        grid[i] = 0
        blanks[k], blanks[best] = blanks[best], blanks[k]
        return total

    return search(0)


def solved_grid(n: int, rng: random.Random) -> list[int]:
    """A random valid full grid (backtracking with random digit orders: every grid can come out, not all equally often)."""
    box = check_size(n)
    grid = [0] * (n * n)

    def fill(i: int) -> bool:
        if i == n * n:
            return True
        options = list(_candidates(grid, i, n, box))
        rng.shuffle(options)
        for v in options:
            grid[i] = v
            if fill(i + 1):
                return True
        grid[i] = 0
        return False

    fill(0)
    return grid


def make_puzzle(n: int, blanks: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(puzzle with 0 for blanks, its unique solution)."""
    check_size(n)
    if not 0 < blanks < n * n:
        raise SettingError(f"`sudoku.blanks` must lie in [1, {n * n - 1}] for {n} x {n} sudoku, got {blanks!r}")
    solution = solved_grid(n, rng)
    puzzle = list(solution)
    order = list(range(n * n))
    rng.shuffle(order)
    cleared = 0
    for i in order:
        if cleared == blanks:
            break
        keep, puzzle[i] = puzzle[i], 0
        if count_solutions(puzzle, n) == 1:
            cleared += 1
        else:
            puzzle[i] = keep
    return puzzle, solution


def grid_text(grid: list[int], n: int) -> str:
    return " ".join("".join(str(v) if v else "." for v in grid[r * n:(r + 1) * n]) for r in range(n))


def parse_grid(text: str, n: int) -> list[int] | None:
    """The first n*n cells of `text` (digits, '.' for a blank), spaces and '/' between rows ignored;
    None if anything else comes before them or there are fewer."""
    cells = []
    for ch in text:
        if len(cells) == n * n:
            break
        if ch.isdigit():
            cells.append(int(ch))
        elif ch == ".":
            cells.append(0)
        elif ch in " \t\n/|,":
            continue
        else:
            return None
    return cells if len(cells) == n * n else None


def is_valid_solution(cells: list[int], n: int) -> bool:
    box = check_size(n)
    digits = set(range(1, n + 1))
    rows = [cells[r * n:(r + 1) * n] for r in range(n)]
    cols = [[cells[r * n + c] for r in range(n)] for c in range(n)]
    boxes = [[cells[(br + a) * n + bc + b] for a in range(box) for b in range(box)]
             for br in range(0, n, box) for bc in range(0, n, box)]
    return all(set(group) == digits for group in rows + cols + boxes)


def verify(puzzle_text: str, completion: str, n: int) -> float:
    """1.0 when the completion's grid is a valid solution that keeps the puzzle's givens, else 0.0."""
    puzzle = parse_grid(puzzle_text, n)
    cells = parse_grid(completion, n)
    if puzzle is None or cells is None or 0 in cells:
        return 0.0
    if any(p and p != c for p, c in zip(puzzle, cells)):
        return 0.0
    return 1.0 if is_valid_solution(cells, n) else 0.0


def records(count: int, seed: int, *, size: int = 4, blanks: int | None = None) -> list[dict]:
    """`count` puzzles from `seed`: {'prompt', 'response', 'task', 'puzzle'}; blanks None: half the cells."""
    rng = random.Random(seed)
    blanks = blanks if blanks is not None else size * size // 2
    out = []
    for _ in range(count):
        puzzle, solution = make_puzzle(size, blanks, rng)
        p = grid_text(puzzle, size)
        out.append({"prompt": f"sudoku {size}x{size}: {p} =", "response": grid_text(solution, size),
                    "task": "sudoku", "puzzle": p, "size": size})
    return out


__all__ = ["SIZES", "count_solutions", "grid_text", "is_valid_solution", "make_puzzle", "parse_grid", "records",
           "solved_grid", "verify"]
