"""Multiple choice (MMBench style): find the option letter in a free-form answer, then score exact letters."""

from __future__ import annotations

import re

LETTERS = "ABCDEFGH"


def extract_choice(text: str, letters: str = LETTERS) -> str | None:
    """'B', 'B.', '(B) cat', 'Answer: B', 'The answer is B.' -> 'B'; None when no single letter is named."""
    t = text.strip()
    patterns = [rf"^\(?([{letters}])\)?(?:[.):,]|\s|$)", rf"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([{letters}])\)?\b",
                rf"\(([{letters}])\)"]
    for pattern in patterns:
        m = re.search(pattern, t, flags=re.IGNORECASE if pattern != patterns[0] else 0)
        if m:
            return m.group(1).upper()
    found = set(re.findall(rf"\b([{letters}])\b", t))
    return found.pop() if len(found) == 1 else None


def choice_right(pred: str, ref: str) -> bool:
    return extract_choice(pred) == (extract_choice(ref) or ref.strip().upper())


def choice_accuracy(preds: list[str], refs: list[str]) -> float:
    return sum(map(choice_right, preds, refs)) / max(1, len(refs))
