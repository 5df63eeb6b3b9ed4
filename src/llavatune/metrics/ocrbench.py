"""OCRBench as lmms-eval scores it (`ocrbench_process_results`): an answer is right when one of the accepted answers
is inside it, both lower-cased with full-width ASCII folded to ASCII and line breaks as spaces; for the handwritten
formulas (rows of the "HME100k" dataset) with every space and line break removed and case kept. The published
score is the count right on the 1,000 questions: 1,000 x ocrbench_accuracy."""

from __future__ import annotations

from llavatune.metrics.groups import group_shares, share


# full-width ASCII (U+FF01..U+FF5E) and the ideographic space as their ASCII forms; nothing else changes
FOLD = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: " "}


def ocrbench_right(pred: str, answers: list[str], dataset: str | None) -> bool:
    if dataset == "HME100k":
        def squeeze(text: str) -> str:
            return text.strip().replace("\n", " ").replace(" ", "")
        return any(squeeze(a) in squeeze(pred) for a in answers)

    def plain(text: str) -> str:
        return text.translate(FOLD).lower().strip().replace("\n", " ")
    return any(plain(a) in plain(pred.strip()) for a in answers)


def ocrbench_scores(right: list[bool], kinds: list[str | None]) -> dict[str, float]:
    """ocrbench_accuracy, then the share right per question type (the row's "question_type": Regular Text
    Recognition, Scene Text-centric VQA, ...)."""
    return {"ocrbench_accuracy": share(right), **group_shares("ocrbench", right, kinds)}
