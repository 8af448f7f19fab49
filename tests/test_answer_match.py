"""Generated answers scored as SQuAD v1.1's official script scores them, and Function Vectors'
exact match: hand-checked cases, and the official script's functions as a reference."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from adainfer.tasks.answer_match import exact_match, exact_match_strict, f1, normalize_answer


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Cat!", "cat"),
        ("an apple a day", "apple day"),
        ("theory of Athens", "theory of athens"),  # articles only as whole words
        ("U.S. 3,000 well-known", "us 3000 wellknown"),  # punctuation dropped inside words too
        ("  a\n  b\t c ", "b c"),
        ("\u201ccat\u201d", "\u201ccat\u201d"),  # curly quotes are not string.punctuation
        ("", ""),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_over_all_golds():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("Broncos", ["Denver Broncos", "the Broncos"]) == 1.0
    assert exact_match("Broncos", ["Denver Broncos", "Carolina Panthers"]) == 0.0
    assert exact_match("", ["the"]) == 1.0  # both normalize to nothing, as in the script
    with pytest.raises(ValueError, match="no gold answers"):
        exact_match("cat", [])


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("the Denver Broncos team", ["Denver Broncos"], 0.8),  # P 2/3, R 1
        ("Broncos", ["Denver Broncos", "Carolina Panthers"], 2 / 3),  # P 1, R 1/2
        ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"], 0.8),  # best gold
        ("the the cat cat", ["cat"], 2 / 3),  # repeats: P 1/2, R 1
        ("cat cat", ["cat cat dog"], 0.8),  # P 1, R 2/3
        ("dog", ["cat"], 0.0),
        ("", ["the"], 0.0),  # nothing shared: 0, even when both are empty
        ("The Cat!", ["cat"], 1.0),
    ],
)
def test_f1_hand_checked(prediction, golds, expected):
    assert f1(prediction, golds) == pytest.approx(expected)


# --- the official SQuAD v1.1 evaluate script's functions, as published -----------------------


def _official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


STRINGS = [
    "The Cat!",
    "cat",
    "Denver Broncos",
    "the Denver Broncos",
    "Broncos, Denver",
    "A.B.C. the-end",
    "an  Apple\ta day",
    "1,000 the 1000",
    "Théâtre de l'Odéon",
    "",
    "  ",
]


def test_equals_the_official_script():
    for pred in STRINGS:
        assert normalize_answer(pred) == _official_normalize(pred)
        for gold in STRINGS:
            assert f1(pred, [gold]) == pytest.approx(_official_f1(pred, gold))
            assert exact_match(pred, gold) == float(
                _official_normalize(pred) == _official_normalize(gold)
            )
        best = max(_official_f1(pred, g) for g in STRINGS)
        assert f1(pred, STRINGS) == pytest.approx(best)


def test_function_vectors_exact_match_keeps_case_and_punctuation():
    assert exact_match_strict(" Paris", "Paris") == 1.0
    assert exact_match_strict("Paris\n", ["Rome", "Paris"]) == 1.0
    assert exact_match_strict("paris", "Paris") == 0.0
    assert exact_match_strict("Paris.", "Paris") == 0.0
