"""Metrics against hand-computed values from the official definitions (VQA / TextVQA, POPE, MMBench)."""

from __future__ import annotations

import pytest

from llavatune.metrics import (choice_accuracy, exact_match, extract_choice, normalize_vqa_answer, vqa_accuracy,
                               yes_or_no, yesno_scores)


@pytest.mark.parametrize("raw,expected", [
    ("Two", "2"),
    ("the cat", "cat"),
    ("A Red Car.", "red car"),
    ("dont", "don't"),
    ("it's", "it 's"),              # "'s" is split off before punctuation handling
    ("3.5", "3.5"),                 # a period between digits stays
    ("1,000", "1000"),              # commas go first
    ("yes!", "yes"),                # '!' next to nothing on its right: replaced by a space, then stripped by split
    ("red-white", "red white"),     # '-' with no space around it becomes a space
    ("red - white", "red white"),   # with a space next to it, it is removed
    ("hello?", "hello"),
    ("  many\tspaces\nhere ", "many spaces here"),
    ("none", "0"),
    ("an apple and the pear", "apple and pear"),
])
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out():
    gts = ["cat"] * 3 + ["dog"] * 7
    # 'cat': leaving out one of the 3 cats leaves 2 matches (2/3), leaving out a dog leaves 3 (1): (3*2/3 + 7)/10
    assert vqa_accuracy("cat", gts) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("Dog.", gts) == 1.0
    assert vqa_accuracy("bird", gts) == 0.0
    one = ["cat"] + ["dog"] * 9  # a single matching human answer: 9 subsets with 1/3, one with 0
    assert vqa_accuracy("cat", one) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_accuracy("two", ["2"] * 10) == 1.0


def test_exact_match():
    assert exact_match("The Red circle.", "red circle") == 1.0
    assert exact_match("red", ["blue", "Red!"]) == 1.0
    assert exact_match("red circle", "circle") == 0.0


def test_yes_no_pope_rule():
    assert yes_or_no("Yes, there is a dog.") == "yes"
    assert yes_or_no("No, there is not.") == "no"
    assert yes_or_no("There is not a dog in the image.") == "no"
    assert yes_or_no("Nope") == "yes"  # POPE's rule looks for the words no/No/not only
    scores = yesno_scores(["yes", "no", "yes", "no"], ["yes", "yes", "no", "no"])
    assert scores == {"yesno_accuracy": 0.5, "yesno_precision": 0.5, "yesno_recall": 0.5, "yesno_f1": 0.5,
                      "yes_ratio": 0.5}


@pytest.mark.parametrize("text,letter", [("B", "B"), ("B.", "B"), ("(C) a cat", "C"), ("Answer: D", "D"),
                                         ("The answer is A.", "A"), ("I think it is (B)", "B"), ("cat", None)])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_accuracy():
    assert choice_accuracy(["A", "The answer is C", "dog"], ["A", "B", "C"]) == pytest.approx(1 / 3)


def test_period_strip_stops_after_32_like_the_reference():
    # the reference passes re.UNICODE (32) where re.sub takes `count`
    assert normalize_vqa_answer("x" + "." * 40) == "x" + "." * 8
