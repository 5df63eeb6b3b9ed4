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


def pope_scores(preds: list[str], refs: list[str], categories: list[str]) -> dict[str, float]:
    """POPE as LLaVA-1.5 reports it: yes/no accuracy and F1 within each category (adversarial, popular, random:
    eval_pope.py scores each category's file apart), and `pope_f1`, their F1s' mean (85.9 for LLaVA-1.5-7B)."""
    out: dict[str, float] = {}
    for category in sorted(set(categories)):
        mine = [i for i, c in enumerate(categories) if c == category]
        scores = yesno_scores([preds[i] for i in mine], [refs[i] for i in mine])
        out[f"pope_{category}_accuracy"], out[f"pope_{category}_f1"] = scores["yesno_accuracy"], scores["yesno_f1"]
    f1s = [v for k, v in out.items() if k.endswith("_f1")]
    return {"pope_f1": sum(f1s) / max(1, len(f1s)), **out}
