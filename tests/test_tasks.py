"""The generated tasks (duolm.data.tasks): puzzles with unique solutions, verifiers on hand-made right
and wrong answers (formats included), held-out splits, and the data groups that read them."""
from __future__ import annotations

import itertools

import pytest

from duolm.data.tasks import TASKS, arithmetic, countdown, sudoku, task_splits
from duolm.data.tokenizers import load_tokenizer


def _all_4x4_grids():
    """Every valid 4 x 4 sudoku grid, by brute force over row permutations (288 of them)."""
    rows = list(itertools.permutations(range(1, 5)))
    out = []
    for grid in itertools.product(rows, repeat=4):
        cells = [v for row in grid for v in row]
        if sudoku.is_valid_solution(cells, 4):
            out.append(cells)
    return out


def test_4x4_puzzles_have_one_solution_by_brute_force():
    grids = _all_4x4_grids()
    assert len(grids) == 288
    for record in sudoku.records(40, seed=1, size=4, blanks=10):
        puzzle = sudoku.parse_grid(record["puzzle"], 4)
        matches = [g for g in grids if all(p == 0 or p == v for p, v in zip(puzzle, g))]
        assert len(matches) == 1 and sudoku.grid_text(matches[0], 4) == record["response"]


def test_9x9_puzzles_are_unique_and_blanks_set_the_difficulty():
    easy = sudoku.records(3, seed=2, size=9, blanks=30)
    hard = sudoku.records(3, seed=2, size=9, blanks=50)
    for rec in easy + hard:
        puzzle = sudoku.parse_grid(rec["puzzle"], 9)
        assert sudoku.count_solutions(puzzle, 9) == 1
        assert sudoku.verify(rec["puzzle"], rec["response"], 9) == 1.0
    assert all(sudoku.parse_grid(r["puzzle"], 9).count(0) == 30 for r in easy)
    assert all(40 <= sudoku.parse_grid(r["puzzle"], 9).count(0) <= 50 for r in hard)




@pytest.mark.parametrize("completion,score", [
    ("1234 3412 2143 4321", 1.0),
    ("1234/3412/2143/4321", 1.0),                # row separators
    ("1234\n3412\n2143\n4321 and done", 1.0),     # anything after the grid
    ("  1234341221434321", 1.0),                  # no separators
    ("1234 3412 2143 4312", 0.0),                 # a column repeats
    ("1234 3412 2143 432", 0.0),                  # too short
    ("grid: 1234 3412 2143 4321", 0.0),           # text before the grid
    ("1234 3412 21.3 4321", 0.0),                 # a blank left
    ("2134 3412 1243 4321", 0.0),                 # breaks a given (the 1 in the corner)
])
def test_the_sudoku_verifier(completion, score):
    puzzle = "1... 3... 2... 4..1"
    assert sudoku.count_solutions(sudoku.parse_grid(puzzle, 4), 4) >= 1
    assert sudoku.verify(puzzle, completion, 4) == score


@pytest.mark.parametrize("completion,score", [
    ("25+7*3", 1.0),
    ("answer: 7*3+25", 1.0),
    ("(25 + 7 * 3) = 46", 1.0),
    ("25+7*3\nbecause 21 + 25", 1.0),
    ("25+7+3", 0.0),                  # 35
    ("25+7*3+0", 0.0),                # a number not given
    ("25+21", 0.0),                   # numbers not the given ones
    ("25+7*3*1", 0.0),
    ("25*2-7+3*0", 0.0),
    ("__import__('os').system('x')", 0.0),  # not arithmetic: never evaluated
    ("25/(7-7)+3", 0.0),             # 7 twice, and a division by zero
    ("", 0.0),
])
def test_the_countdown_verifier(completion, score):
    assert countdown.verify([3, 7, 25], 46, completion) == score


def test_countdown_allows_fractions_inside_and_its_problems_are_solvable():
    assert countdown.verify([3, 6, 4], 8, "6/3*4") == 1.0
    assert countdown.verify([2, 3, 9], 6, "9/(3/2)") == 1.0  # 3/2 is not an integer on the way
    for rec in countdown.records(50, seed=3, numbers=4):
        assert countdown.verify(rec["numbers"], rec["target"], rec["response"]) == 1.0
        assert countdown.parse_prompt(rec["prompt"]) == (rec["numbers"], rec["target"])


@pytest.mark.parametrize("completion,score", [("579", 1.0), (" 579.", 1.0), ("answer: 579", 1.0), ("579 is it", 1.0),
                                              ("5790", 0.0), ("57", 0.0), ("the sum is 579", 0.0), ("-579", 0.0)])
def test_the_arithmetic_verifier(completion, score):
    assert arithmetic.verify(579, completion) == score


def test_held_out_splits_are_seeded_and_disjoint():
    for name in TASKS:
        train, valid = task_splits(name, {"train_size": 300, "valid_size": 50})
        assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in valid}) and valid
        again, _ = task_splits(name, {"train_size": 300, "valid_size": 50})
        other, _ = task_splits(name, {"train_size": 300, "valid_size": 50, "seed": 1})
        assert again == train and other != train
        assert all(TASKS[name].verify(r, r["response"]) == 1.0 for r in valid)


def test_every_record_is_spelt_by_the_puzzle_tokenizer():
    tok = load_tokenizer("puzzle")
    for name in TASKS:
        train, _ = task_splits(name, {"train_size": 50, "valid_size": 5})
        for r in train:
            for text in (r["prompt"], r["response"]):
                assert tok.decode(tok.encode(text)) == text.strip()


def test_a_task_setting_it_does_not_have_is_one_sentence():
    from said_as import raises_said_as

    with raises_said_as("'digits' is not a setting of sudoku"):
        task_splits("sudoku", {"digits": 3})


def test_the_data_groups_build_instruction_splits(tmp_path):
    from duolm.data.pipeline import build_splits

    for name in TASKS:
        splits = build_splits(name, load_tokenizer("puzzle"), 48, "pad", str(tmp_path),
                              task={"train_size": 40, "valid_size": 8})
        assert len(splits["train"]) == 40 and 0 < len(splits["valid"]) <= 8
