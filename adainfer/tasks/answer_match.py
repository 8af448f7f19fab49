"""Scoring generated answers: SQuAD's exact match and token F1, and Function Vectors' exact match.

SQuAD v1.1's official evaluation (``evaluate-v1.1.py``) compares answers after one
normalization: lowercase, drop every ASCII punctuation character (``string.punctuation``),
drop the articles ``a``, ``an``, ``the`` as whole words, and collapse whitespace. Exact match
is 1 when the normalized prediction equals a normalized gold answer; F1 is the harmonic mean
of precision and recall over the normalized words the two share (a bag of words: repeats count
as often as both hold them). Both take the best over all gold answers of a question (SQuAD's
validation questions have up to six annotator answers). As in the official script, a
prediction or gold answer that normalizes to nothing has F1 0 (even against another empty one);
its exact match is 1 against an empty gold answer.

Function Vectors' answers are short words or phrases whose case and punctuation are the task
(``capitalize``, ``lowercase_first_letter``, ...), so they are compared as written, less
leading and trailing whitespace.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers to compare with: pass one or more")
    return golds


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 when ``prediction`` equals one of ``golds`` after :func:`normalize_answer`."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1(pred: list[str], gold: list[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD's token F1 of ``prediction``, the best over ``golds``."""
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in _golds(golds))


def exact_match_strict(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 when ``prediction`` equals one of ``golds`` as written, less outer whitespace
    (Function Vectors: case and punctuation are part of the answer)."""
    return float(any(prediction.strip() == g.strip() for g in _golds(golds)))
