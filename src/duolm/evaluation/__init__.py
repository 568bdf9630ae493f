"""Evaluation: likelihood bounds, and (later) sample quality."""
from duolm.evaluation.likelihood import evaluate_nelbo

__all__ = ["evaluate_nelbo"]
