"""The metric functions against hand-computed cases (seed 003's Levenshtein ratio, LongBench's metrics)."""

from __future__ import annotations

import pytest

from lmx.evals import metrics

LEVENSHTEIN_CASES = [  # (a, b, expected): 1 - indel / (len a + len b)
    ("kitten", "sitting", 1 - 5 / 13),  # LCS "ittn": indel = 6 + 7 - 2 * 4 = 5
    ("abc", "abc", 1.0),
    ("", "", 1.0),
    ("abc", "", 0.0),
    ("ab", "ba", 1 - 2 / 4),  # LCS 1: delete one, insert one
]


@pytest.mark.parametrize("a,b,expected", LEVENSHTEIN_CASES)
def test_levenshtein_ratio(a, b, expected):
    assert metrics.levenshtein_ratio(a, b) == pytest.approx(expected, abs=1e-12)


def test_word_count_difference():
    assert metrics.word_count_difference("one two three", "one two") == 1
    assert metrics.word_count_difference("one two", "  one\ntwo three four ") == 2


@pytest.mark.parametrize("text,expected", [
    ("The Cat, sat!", "cat sat"),
    ("U.S.A.", "usa"),
    ("an apple and a pear", "apple and pear"),
    ("  lots\n of   space ", "lots of space"),
    ("theater", "theater"),  # an article only as a whole word
])  # fmt: skip
def test_normalize_answer(text, expected):
    assert metrics.normalize_answer(text) == expected


def test_qa_f1_score():
    # "cat sat on mat" vs "cat sat": 2 shared, precision 2/4, recall 2/2 -> F1 = 2/3
    assert metrics.qa_f1_score("The cat sat on the mat.", "a cat sat") == pytest.approx(2 / 3)
    assert metrics.qa_f1_score("Paris", "paris.") == 1.0
    assert metrics.qa_f1_score("London", "Paris") == 0.0
    assert metrics.qa_f1_score("the", "Paris") == 0.0  # nothing left after normalisation
    # multiset overlap: {x: 2, y: 1} & {x: 1, y: 2} = 2 tokens; precision = recall = 2/3
    assert metrics.qa_f1_score("x x y", "x y y") == pytest.approx(2 / 3)


ROUGE_CASES = [
    # one sentence each; word sets of 5, LCS "the cat on the mat" -> its word set {the, cat, on, mat} = 4
    ("the cat sat on the mat", "the cat is on the mat", 0.8),
    # sentences cut at "."; the union LCS of "a b c d" with "a b" and "c d" is all four words
    ("a b. c d", "a b c d", 1.0),
    # exclusive counting: n = |{the}| = 1, m = |{the, cat}| = 2, overlap 1 -> P 1, R 1/2, F 2/3
    ("the the the", "the cat", 2 / 3),
    ("x y z", "a b c", 0.0),
]


@pytest.mark.parametrize("hyp,ref,expected", ROUGE_CASES)
def test_rouge_score(hyp, ref, expected):
    assert metrics.rouge_score(hyp, ref) == pytest.approx(expected, abs=1e-7)


def test_rouge_score_empty_side_scores_zero():
    assert metrics.rouge_score("", "the cat") == 0.0
    assert metrics.rouge_score("...", "the cat") == 0.0  # only empty sentences
    assert metrics.rouge_score("the cat", "") == 0.0


CLASSES = ["Location", "Entity", "Abbreviation", "Human being", "Human"]


@pytest.mark.parametrize("prediction,truth,expected", [
    ("Entity", "Entity", 1.0),
    ("Location or Entity", "Entity", 0.5),
    ("no idea", "Entity", 0.0),  # LongBench never reaches its difflib fallback
    ("Human being", "Human being", 1.0),  # "Human" is dropped: a strict substring of the truth
    ("Location", "Entity", 0.0),
])  # fmt: skip
def test_classification_score(prediction, truth, expected):
    assert metrics.classification_score(prediction, truth, all_classes=CLASSES) == expected


def test_retrieval_and_count_scores():
    assert metrics.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert metrics.retrieval_score("Paragraph 3 or Paragraph 4", "Paragraph 3") == 0.5
    assert metrics.retrieval_score("I do not know", "Paragraph 3") == 0.0
    assert metrics.retrieval_score("Paragraph 13", "Paragraph 3") == 0.0  # whole numbers only
    assert metrics.count_score("5", "5") == 1.0
    assert metrics.count_score("There are 5 or 6", "5") == 0.5
    assert metrics.count_score("many", "5") == 0.0


def test_code_sim_score():
    # the first line without a backtick, '#' or '//' is the prediction
    assert metrics.first_code_line("\n```python\n# set x\nx = 1\ny = 2") == "x = 1"
    assert metrics.code_sim_score("```python\n# set x\nx = 1\n```", "x = 1") == 1.0
    assert metrics.code_sim_score("abcd", "abce") == 0.75  # round(100 * (1 - 2/8)) / 100
    assert metrics.code_sim_score("# only a comment", "x = 1") == 0.0  # no code line: "" vs the truth


@pytest.mark.parametrize("a,b,expected", [
    ("abcd", "abce", 75), ("same", "same", 100), ("", "", 100), ("", "x", 0), ("kitten", "sitting", 62),
])  # fmt: skip
def test_fuzz_ratio_is_fuzzywuzzy_ratio(a, b, expected):
    """fuzzywuzzy.fuzz.ratio with python-Levenshtein: equal -> 100, an empty side -> 0, else round(100 * ratio)."""
    assert metrics.fuzz_ratio(a, b) == expected
