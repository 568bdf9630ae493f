"""Evaluation: likelihood bounds (likelihood.py), sample quality with and without a judge model
(samples.py, judge.py), exact yardsticks (hmm.py) and plots (plots.py)."""
from duolm.evaluation.likelihood import evaluate_nelbo

__all__ = ["evaluate_nelbo"]
