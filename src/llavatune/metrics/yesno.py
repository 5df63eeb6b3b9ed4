"""Yes/no scores as POPE's evaluation computes them (LLaVA `llava/eval/eval_pope.py`): the first sentence of
the answer counts as 'no' if it has the word 'no', 'No' or 'not', else 'yes'; 'yes' is the positive class."""

from __future__ import annotations


def yes_or_no(text: str) -> str:
    first = text.split(".")[0].replace(",", "")
    words = first.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def yesno_scores(preds: list[str], refs: list[str]) -> dict[str, float]:
    """accuracy, precision, recall, F1 and the share of 'yes' answers."""
    p = [yes_or_no(x) == "yes" for x in preds]
    r = [yes_or_no(x) == "yes" for x in refs]
    tp = sum(a and b for a, b in zip(p, r))
    fp = sum(a and not b for a, b in zip(p, r))
    tn = sum(not a and not b for a, b in zip(p, r))
    fn = sum(not a and b for a, b in zip(p, r))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"yesno_accuracy": (tp + tn) / max(1, len(p)), "yesno_precision": precision, "yesno_recall": recall,
            "yesno_f1": f1, "yes_ratio": sum(p) / max(1, len(p))}
