"""Metrics against hand-computed values from the official definitions (VQA / TextVQA, POPE, MMBench, MME, MMMU,
DocVQA's ANLS, ChartQA's relaxed accuracy, OCRBench)."""

from __future__ import annotations

import pytest

from llavatune.metrics import (anls, choice_accuracy, exact_match, extract_choice, mmbench_letter, mmbench_scores,
                               mme_label, mme_scores, mmmu_right, mmmu_scores, normalize_vqa_answer, pope_scores,
                               ocrbench_right, ocrbench_scores, relaxed_correct, relaxed_scores, vqa_accuracy,
                               yes_or_no, yesno_scores)
from llavatune.metrics.anls import levenshtein
from llavatune.metrics.mmmu import mmmu_choice, mmmu_open


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
    assert exact_match("红色。", "红色") == 1.0 and exact_match("是的！", ["是的"]) == 1.0
    assert exact_match("red .", "red") == 1.0 and exact_match("红色", "蓝色") == 0.0


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


@pytest.mark.parametrize("text,label", [
    ("Yes", "yes"), ("no.", "no"), ("Y", "yes"), ("n", "no"), ("x", "other"),
    ("Yes, there is a dog.", "yes"),   # 'yes' inside the first four characters
    ("Not really", "no"),              # 'no' inside 'not ': MME's rule, not a word match
    ("nope", "no"), ("I think yes", "other"), ("  YES.  ", "yes"), ("", "other"),
])
def test_mme_label(text, label):
    assert mme_label(text) == label


def test_mme_scores_pair_questions_per_image():
    """existence: image a both right (100 + 100), image b one right (50 + 0): mean 125. code_reasoning (a
    cognition category): both wrong, 0. count: one image both right: 200."""
    preds = ["Yes", "No", "Yes", "yes", "no", "maybe", "yes", "no"]
    refs = ["Yes", "No", "Yes", "No", "Yes", "No", "Yes", "No"]
    images = ["a", "a", "b", "b", "c", "c", "d", "d"]
    cats = ["existence"] * 4 + ["code_reasoning"] * 2 + ["count"] * 2
    scores = mme_scores(preds, refs, images, cats)
    assert scores == {"mme_perception": 325.0, "mme_cognition": 0.0, "mme_existence": 125.0,
                      "mme_code_reasoning": 0.0, "mme_count": 200.0}
    with pytest.raises(ValueError, match="two questions per image"):
        mme_scores(preds[:3], refs[:3], images[:3], cats[:3])


def test_pope_scores_each_category_apart_and_reports_their_mean_f1():
    """As LLaVA's eval_pope.py: one score per category file; LLaVA-1.5's POPE number is the mean of the F1s."""
    preds = ["yes", "no", "yes", "yes"] + ["yes", "no", "no", "no"]
    refs = ["yes", "no", "no", "yes"] + ["yes", "yes", "no", "no"]
    categories = ["adversarial"] * 4 + ["random"] * 4
    scores = pope_scores(preds, refs, categories)
    adversarial, random = yesno_scores(preds[:4], refs[:4]), yesno_scores(preds[4:], refs[4:])
    assert scores["pope_adversarial_f1"] == adversarial["yesno_f1"] == 0.8
    assert scores["pope_random_f1"] == random["yesno_f1"] == pytest.approx(2 / 3)
    assert scores["pope_random_accuracy"] == 0.75
    assert scores["pope_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert scores["pope_f1"] != yesno_scores(preds, refs)["yesno_f1"]  # not one score over the pooled rows


@pytest.mark.parametrize("answer,letter", [
    ("B", "B"), ("B.", "B"), ("(C) a cat", "C"), ("B) cat", "B"), ("Answer: D", "D"), ("The answer is A.", "A"),
    ("The answer is B", "B"),
    ("A cat sits on the mat", "B"),   # "A" in a longer answer may be the article: the option text decides
    ("cat", "B"), ("A dog", "A"),     # short: the lone A is the letter
    ("I choose A or B", None),        # two letters
    ("a cat and a dog", None),        # two options' texts
    ("E", "E"),                       # MMBench's "none of them", never a reference
    ("not sure", None),
])
def test_mmbench_letter_reads_answers_as_mmbench_does(answer, letter):
    assert mmbench_letter(answer, {"A": "dog", "B": "cat", "C": "Bird"}) == letter


def test_mmbench_circular_eval_needs_every_copy_of_a_question_right():
    """Question 1 is asked twice (options rotated: its copy 1000001 has the answer at A), right both times;
    question 2 three times, wrong once; the copy 3000005 has no first row in the set and is not scored."""
    options = {"A": "dog", "B": "cat"}
    preds = ["B", "A", "B", "B", "I am not sure", "A"]
    refs = ["B", "A", "B", "A", "A", "A"]
    indices = [1, 1000001, 2, 1000002, 2000002, 3000005]
    categories = ["ocr", "ocr", "scene", "scene", "scene", "scene"]
    l2 = ["finegrained_perception (instance-level)"] * 2 + ["coarse_perception"] * 4
    scores = mmbench_scores(preds, refs, indices, [options] * 6, categories, l2)
    assert scores == {"mmbench_circular": 0.5, "mmbench_unread": pytest.approx(1 / 6),
                      "mmbench_coarse_perception": 0.0, "mmbench_finegrained_perception (instance-level)": 1.0,
                      "mmbench_ocr": 1.0, "mmbench_scene": 0.0}
    assert choice_accuracy(preds, refs) == pytest.approx(4 / 6)  # one pass over the rows counts the copies apart
    assert mmbench_scores(["B"], ["B"], [7], [options], [None], [None]) == {"mmbench_circular": 1.0,
                                                                           "mmbench_unread": 0.0}


@pytest.mark.parametrize("answer,letter", [
    ("(B)", "B"), ("B", "B"), ("The answer is (C).", "C"), ("It is C.", "C"), ("Answer: A", "A"),
    ("A and B", "B"),                                           # two letters: the one named last
    ("(A) is wrong, (C) is right", "C"),                        # bracketed ones first, the last of them
    ("I think the right one is the red apple here", "B"),       # over five words: the option's text
    ("red apple", None),                                        # five words or fewer: no text match (random)
])
def test_mmmu_choice_reads_answers_as_mmmu_does(answer, letter):
    options = ["green pear", "red apple", "blue plum"]
    got = mmmu_choice(answer, options, "validation_Art_1")
    if letter is None:  # MMMU's tool draws a letter at random; here the same one for the same question
        assert got in "ABC" and got == mmmu_choice(answer, options, "validation_Art_1")
    else:
        assert got == letter


def test_mmmu_open_answers_by_their_key_parts_and_numbers():
    assert mmmu_open("The answer is 42.") == [42.0]                   # the shortest tail after a key word
    assert mmmu_right("The answer is 42.", "42.001", "open", [], "validation_Math_1")  # numbers to 2 decimals
    assert mmmu_right("x = 3.14159", "3.14", "open", [], "validation_Math_1")        # "=" in the last line
    assert mmmu_right("Paris", "paris", "open", [], "validation_Geography_1")
    assert mmmu_right("a", "a", "open", [], "validation_Math_1")  # one letter: padded " a" / "a " on both sides
    assert not mmmu_right("the cab is big", "b", "open", [], "validation_Math_1")  # "big": no " b" nor "b " in it
    assert mmmu_right("(B)", "B", "multiple-choice", ["x", "y"], "validation_Art_1")


def test_mmmu_scores_overall_and_per_discipline():
    scores = mmmu_scores([True, False, True], ["validation_Art_1", "validation_Math_2", "validation_Art_Theory_3"])
    assert scores == {"mmmu_accuracy": pytest.approx(2 / 3), "mmmu_art_and_design": 1.0, "mmmu_science": 0.0}
    with pytest.raises(ValueError, match="split_Subject_number"):
        mmmu_scores([True], ["Art-1"])


def test_levenshtein():
    assert [levenshtein(a, b) for a, b in [("", ""), ("", "abc"), ("kitten", "sitting"), ("flaw", "lawn"),
                                           ("abc", "abc"), ("ab", "ba")]] == [0, 3, 3, 2, 0, 2]


def test_anls_as_docvqa_scores_it():
    """1 - distance / the longer text, against the closest reference; under 0.5 it is a wrong answer, 0."""
    assert anls("Kitten", ["sitting", "kitten"]) == 1.0            # case does not count; the closest reference
    assert anls("  the  cat ", ["the cat"]) == 1.0                  # nor runs of whitespace
    assert anls("3/12/1998", ["3/12/1988"]) == pytest.approx(1 - 1 / 9)  # a misread digit: 0.889
    assert anls("flaw", ["lawn"]) == 0.5 and anls("abcde", ["abxyz"]) == 0.0  # 1 - 2/4 counts, 1 - 3/5 = 0.4 not
    # the length is the raw texts', before whitespace is folded (lmms-eval's and Qwen-VL's code): 1 - 1/9, not 1 - 1/5
    assert anls("abcd    e", ["abcde"]) == pytest.approx(1 - 1 / 9)
    assert anls("", [""]) == 1.0


@pytest.mark.parametrize("pred,answer,right", [
    ("12", "12.5", True),      # 4% off
    ("13.2", "12.5", False),   # 5.6% off
    ("57%", "0.56", True),     # a percentage reads as its share
    ("0", "0", True), ("0.0", "0", False),  # a reference of 0 is compared as text
    ("Yes", "yes", True), ("Yes.", "yes", False),  # text must match, case aside
    (" 12 ", "12", True),      # float() reads past spaces
])
def test_relaxed_correct_as_chartqa_scores_it(pred, answer, right):
    assert relaxed_correct(pred, answer) is right


def test_relaxed_scores_overall_and_per_chartqa_split():
    right, kinds = [True, False, True, True], ["human_test", "human_test", "augmented_test", None]
    assert relaxed_scores(right, kinds) == {"relaxed_accuracy": 0.75, "relaxed_augmented": 1.0, "relaxed_human": 0.5}


def test_ocrbench_right_when_an_accepted_answer_is_inside_the_answer():
    assert ocrbench_right("The word is CENTRAL.", ["central"], "IIIT5K")            # inside, case aside
    assert ocrbench_right("ＳＴＯＰ sign", ["stop"], "IC13")                          # full-width letters fold
    assert not ocrbench_right("cent ral", ["central"], "IIIT5K")                    # spaces count in text
    assert ocrbench_right("x ^ { 2 } + 1", ["x^{2}+1"], "HME100k")                  # formulas: spaces do not,
    assert not ocrbench_right("X^{2}+1", ["x^{2}+1"], "HME100k")                    # case does
    assert ocrbench_right("it says exit", ["entrance", "exit"], "docVQA")           # any accepted answer
    assert ocrbench_scores([True, False, True], ["Doc-oriented VQA", "Doc-oriented VQA", "Regular Text Recognition"]) \
        == {"ocrbench_accuracy": 2 / 3, "ocrbench_Doc-oriented VQA": 0.5, "ocrbench_Regular Text Recognition": 1.0}
