"""Exact match after normalisation: case, surrounding and inner whitespace, trailing punctuation (full-width too,
as Chinese and Japanese answers end with it), articles."""

from __future__ import annotations

import re

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = text.rstrip(".!?,;:。！？，；：、")
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def exact_match(pred: str, answers: str | list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference answer, else 0.0."""
    refs = [answers] if isinstance(answers, str) else answers
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(a) for a in refs))
