"""Scores as pure functions: exact match (and, with the evaluation issue, VQA accuracy, yes/no, choice)."""

from llavatune.metrics.exact import exact_match, normalize_answer

__all__ = ["exact_match", "normalize_answer"]
