"""MMMU accuracy as MMMU's evaluation tool computes it (its eval_utils.py, also lmms-eval's `mmmu_val` task).

A multiple-choice answer is read as a letter: "(B)" first, else "B " (the letter before a space, the answer's end
counting as one), else "B.", else (in an answer of more than five words) the option whose text it contains; of
several, the one named last. An answer that names
none gets a random letter, as in MMMU's tool (seeded here by the question's id, so that a score repeats). An open
answer is cut to its key parts (after "is", "so", "therefore", "answer", ... and "=" in the last line), the
numbers in them are added, and every part normalised (numbers rounded to 2 decimals, text lowercased); it is right
when a normalised reference number is among them, or a reference text is inside one of the text parts. Scores:
the share right overall, and per discipline (the subject is read from the id, `validation_Art_Theory_12`).
"""

from __future__ import annotations

import random
import re

from llavatune.metrics.groups import share

DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
KEY_WORDS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def mmmu_choice(answer: str, options: list[str], question_id: str) -> str:
    """The letter MMMU's tool reads in a multiple-choice answer (A.. for `options`)."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    for char in ",.!?;:'":
        answer = answer.strip(char)
    padded = f" {answer} "  # a letter at either end still stands alone
    found = [c for c in letters if f"({c})" in padded]
    bracketed, by_text = bool(found), False
    found = found or [c for c in letters if f"{c} " in padded] or [c for c in letters if f"{c}." in padded]
    if not found and len(padded.split()) > 5:
        found, by_text = [c for c, text in zip(letters, options) if text.lower() in padded.lower()], True
    if not found:
        return random.Random(question_id).choice(letters)
    if len(found) == 1:
        return found[0]
    if by_text:
        where = [padded.lower().rfind(options[letters.index(c)].lower()) for c in found]
    else:
        where = [padded.rfind(f"({c})" if bracketed else f" {c} ") for c in found]
    return found[where.index(max(where))]  # the one named last (the first of equals, as numpy's argmax)


def mmmu_open(answer: str) -> list:
    """The normalised candidates MMMU's tool reads in an open answer."""
    parts = _key_parts(answer)
    candidates = parts + [n for part in parts for n in _numbers(part)]
    return list({c for part in candidates for c in _normalise(part)})


def mmmu_right(answer: str, reference: str, question_type: str, options: list[str], question_id: str) -> bool:
    if question_type == "multiple-choice":
        return mmmu_choice(answer, options, question_id) == reference
    golds = _normalise(reference)
    return any((isinstance(c, str) and any(isinstance(g, str) and g in c for g in golds))
               or (not isinstance(c, str) and c in golds) for c in mmmu_open(answer))


def mmmu_scores(rights: list[bool], question_ids: list[str]) -> dict[str, float]:
    """{"mmmu_accuracy", "mmmu_<discipline>" ...} over the questions given."""
    subjects = [_subject(q) for q in question_ids]
    out = {"mmmu_accuracy": share(rights)}
    for discipline, members in DISCIPLINES.items():  # in MMMU's order of disciplines, not sorted
        hits = [r for r, s in zip(rights, subjects) if s in members]
        if hits:
            out[f"mmmu_{discipline.lower().replace(' ', '_')}"] = share(hits)
    return out


def _subject(question_id: str) -> str:
    """'validation_Art_Theory_12' -> 'Art_Theory'."""
    split = question_id.split("_")[0]
    match = re.match(rf"^{re.escape(split)}_(.+?)_\d+$", question_id)
    if not match:
        raise ValueError(f"MMMU ids read split_Subject_number (validation_Art_1); found {question_id!r}")
    return match.group(1)


def _key_parts(answer: str) -> list[str]:
    """Per line, the shortest tail after a key word (an empty tail gives way to the next found), or the whole
    answer. (MMMU's tool also splits at ". " before a capital, which never matches after its lowercasing.)"""
    answer = answer.strip().strip(".").lower()
    parts = []
    lines = answer.split("\n")
    for k, line in enumerate(lines):
        shortest = None
        for word in KEY_WORDS + (("=",) if k == len(lines) - 1 else ()):  # an equation, in the last line only
            if word in line:
                tail = line.split(word)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            parts.append(shortest)
    return parts or [answer]


def _numbers(text: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation, and plain ones, in that order."""
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    plain = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + plain


def _normalise(text: str) -> list:
    """A number -> [it rounded to 2 decimals]; a text -> [it lowercased], a one-letter one padded on either side
    (so that 'a' is not found inside every word)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]
