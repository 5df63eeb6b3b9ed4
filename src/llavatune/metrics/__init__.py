"""Scores as pure functions: exact match, VQA accuracy (official normalisation), yes/no, POPE, choice, MME,
MMBench's CircularEval, MMMU, ANLS (DocVQA, InfoVQA), ChartQA's relaxed accuracy, OCRBench."""

from llavatune.metrics.anls import anls
from llavatune.metrics.choice import choice_accuracy, choice_right, extract_choice
from llavatune.metrics.exact import exact_match, normalize_answer
from llavatune.metrics.mmbench import mmbench_letter, mmbench_scores
from llavatune.metrics.mme import mme_label, mme_scores
from llavatune.metrics.mmmu import mmmu_right, mmmu_scores
from llavatune.metrics.ocrbench import ocrbench_right, ocrbench_scores
from llavatune.metrics.relaxed import relaxed_correct, relaxed_scores
from llavatune.metrics.vqa import normalize_vqa_answer, vqa_accuracy
from llavatune.metrics.yesno import pope_scores, yes_or_no, yesno_scores

__all__ = ["exact_match", "normalize_answer", "normalize_vqa_answer", "vqa_accuracy", "yes_or_no", "yesno_scores",
           "pope_scores", "extract_choice", "choice_right", "choice_accuracy", "mme_label", "mme_scores", "mmbench_letter",
           "mmbench_scores", "mmmu_right", "mmmu_scores", "anls", "relaxed_correct", "relaxed_scores",
           "ocrbench_right", "ocrbench_scores"]
