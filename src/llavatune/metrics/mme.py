"""MME scores as its evaluation tool computes them (MME's eval_tool/calculation.py, lmms-eval's `mme` task).

Every image carries two yes/no questions. An answer is lowercased, stripped and cleared of periods, then read
as 'yes'/'no' when it is exactly that, 'y'/'n' when it is one letter, else 'yes' or 'no' when that word starts
inside its first four characters ('other', always wrong, otherwise). Per image: acc (share right, x100) +
acc+ (100 when both are right); a category scores the mean over its images (0..200); perception and cognition
are the sums over their categories.
"""

from __future__ import annotations

from collections import defaultdict

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(text: str) -> str:
    text = text.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def mme_scores(preds: list[str], refs: list[str], images: list[str], categories: list[str]) -> dict[str, float]:
    """{"mme_perception", "mme_cognition", "mme_<category>" ...}; a category outside MME's perception list
    counts as cognition, as in lmms-eval."""
    right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for pred, ref, image, category in zip(preds, refs, images, categories):
        gold = ref.lower().strip().replace(".", "")
        if gold not in ("yes", "no"):
            raise ValueError(f"MME reference answers are yes or no; {image} has {ref!r}")
        right[category][image].append(mme_label(pred) == gold)
    out = {"mme_perception": 0.0, "mme_cognition": 0.0}
    for category, per_image in right.items():
        odd = [image for image, hits in per_image.items() if len(hits) != 2]
        if odd:
            raise ValueError(f"MME pairs two questions per image; {odd[0]} ({category}) has {len(per_image[odd[0]])}")
        score = sum(100.0 * sum(hits) / 2 + 100.0 * all(hits) for hits in per_image.values()) / len(per_image)
        out[f"mme_{category}"] = score
        out["mme_perception" if category in PERCEPTION else "mme_cognition"] += score
    return out
