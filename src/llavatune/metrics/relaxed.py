"""ChartQA's relaxed accuracy: a number within 5% of the reference counts (figures read off a chart are not exact),
anything else must match it, ignoring case. As lmms-eval's chartqa `relaxed_correctness` (from Qwen-VL's
evaluate_vqa.py, after Methani et al. 2020): "12%" reads as 0.12; a reference of 0 is compared as text; the answer
is compared as given, so "Yes." is not "yes"."""

from __future__ import annotations

from llavatune.metrics.groups import group_shares, share


def _number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(pred: str, answer: str, tolerance: float = 0.05) -> bool:
    said, expected = _number(pred), _number(answer)
    if said is not None and expected:
        return abs(said - expected) / abs(expected) <= tolerance
    return pred.lower() == answer.lower()


def relaxed_scores(right: list[bool], kinds: list[str | None]) -> dict[str, float]:
    """relaxed_accuracy over all questions and, where rows say which ChartQA split they are from ("type":
    human_test or augmented_test), over each: the human-written questions are the hard ones."""
    splits = [k.removesuffix("_test") if k else None for k in kinds]
    return {"relaxed_accuracy": share(right), **group_shares("relaxed", right, splits)}
