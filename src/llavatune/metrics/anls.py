"""ANLS, the score of DocVQA and InfographicVQA: 1 - the normalised edit distance to the closest reference answer,
and 0 where that is under 0.5 (a different answer, not a misspelt one). As lmms-eval's `anls` (from Qwen-VL's
infographicsvqa_eval.py) computes it: answers compared lower-cased with runs of whitespace made one space, the
distance divided by the longer of the two texts as given (before that clean-up)."""

from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions that turn `a` into `b`; one row of the table at a time."""
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        diagonal, row[0] = row[0], j
        for i, ca in enumerate(a, 1):
            diagonal, row[i] = row[i], diagonal if ca == cb else 1 + min(diagonal, row[i], row[i - 1])
    return row[-1]


def anls(pred: str, answers: list[str], threshold: float = 0.5) -> float:
    """1 - min over references of distance / length, 0 below `threshold`."""
    said = " ".join(pred.strip().lower().split())
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(pred.upper()))  # the raw texts, as the reference code has it
        distances.append(0.0 if length == 0 else levenshtein(" ".join(answer.strip().lower().split()), said) / length)
    score = 1 - min(distances)
    return 0.0 if score < threshold else score
