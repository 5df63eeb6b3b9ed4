"""MMBench's CircularEval, as its evaluator scores the dev split (MMBench_Evaluator, in lmms-eval's mmbench task).

An MMBench table holds each question once with its `index` i < 1e6, and again with the options rotated, as rows
i + k * 1e6 (LLaVA's mmbench_dev_20230712.tsv, lmms-lab/MMBench). A question is right only when every copy
of it is answered with that copy's letter; the score is the share of questions (rows i < 1e6) right, overall, per
`category` and per `l2-category`. The letter is read with MMBench's own rule (`can_infer`): one option letter
standing alone in the answer (`B`, `B.`, `(B)`, ...), else the one option whose text the answer contains. Where
neither reads a letter the official tool asks ChatGPT; offline, such an answer counts as wrong, and
`mmbench_unread` is their share of the rows (none, when the model was told to answer with the letter and did).
"""

from __future__ import annotations

from collections import defaultdict

from llavatune.metrics.groups import group_shares, share

CIRCULAR = 1_000_000  # a copy's index: the question's + k * CIRCULAR
LETTERS = "ABCDE"     # E: "none of them", a letter MMBench's matcher may read but never the reference
WRAPS = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
         (":", "."), (":", ")"), (":", ").")]  # (prefix, suffix) around a letter, tried in this order


def mmbench_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option letter MMBench's matcher reads in `answer` ({"A": "cat", ...} the row's options), or None."""
    words = [w.strip() for w in answer.split()]
    bare = [c for c in LETTERS if c in words]
    # a lone "A" in a longer answer may be the article ("A cat sits ..."): then only a wrapped letter counts
    if len(bare) == 1 and not ("A" in words and len(words) > 3):
        return bare[0]
    for prefix, suffix in WRAPS:
        wrapped = [c for c in LETTERS if prefix + c + suffix in words]
        if len(wrapped) == 1:
            return wrapped[0]
    named = [letter for letter, text in options.items() if str(text).lower() in answer.lower()]
    return named[0] if len(named) == 1 else None


def mmbench_scores(preds: list[str], refs: list[str], indices: list[int], options: list[dict[str, str]],
                   categories: list[str | None], l2_categories: list[str | None]) -> dict[str, float]:
    """{"mmbench_circular", "mmbench_unread", "mmbench_<l2-category>" ..., "mmbench_<category>" ...}: shares of
    the questions whose first copy (index < 1e6) is in the set; copies of a question not in it are not scored."""
    right: dict[int, bool] = defaultdict(lambda: True)
    unread = 0
    for pred, ref, index, opts in zip(preds, refs, indices, options):
        letter = mmbench_letter(pred, opts)
        unread += letter is None
        right[index % CIRCULAR] &= letter == ref.strip().upper()
    firsts = [(index, category, l2) for index, category, l2 in zip(indices, categories, l2_categories)
              if index < CIRCULAR]
    hits = [right[i] for i, _, _ in firsts]
    out = {"mmbench_circular": share(hits), "mmbench_unread": unread / max(1, len(preds))}
    for position in (2, 1):  # the 6 abilities (l2-category), then the 20 leaf categories
        out.update(group_shares("mmbench", hits, [row[position] for row in firsts]))
    return out

