"""Text classification with a closed label set: SST-2 (GLUE) and AG News.

The input is the text, the answer is the label's word. ``labels`` lists the words so the
pipeline can check that no two of them share a first token. Both splits are shuffled with
``split_seed`` before the ``n_train`` / ``n_test`` caps (see :func:`sampled_splits`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from adainfer.choices import SST2_TRAIN_ROWS
from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example, Splits
from adainfer.tasks.data import DataTask, sampled_splits
from adainfer.tasks.hub import Source, load_rows, origin

SST2_WORDS = ["negative", "positive"]
AG_NEWS_WORDS = ["World", "Sports", "Business", "Sci/Tech"]
# The words of the Function Vectors ``ag_news`` task, for comparison with it.
AG_NEWS_FV_WORDS = ["World", "Sports", "Business", "Science"]

SST2_TRAIN = Source(
    "SST-2 train", "sst2", "train.jsonl", ("sentence", "label"), "nyu-mll/glue", "sst2", "train"
)
SST2_TEST = Source(
    "SST-2 validation",
    "sst2",
    "validation.jsonl",
    ("sentence", "label"),
    "nyu-mll/glue",
    "sst2",
    "validation",
)
# Locally only a 5,000-row subset of AG News train exists (see shared/data/SOURCES.md).
AG_NEWS_TRAIN = Source(
    "AG News train",
    "ag_news",
    "train_subset.jsonl",
    ("text", "label"),
    "fancyzhx/ag_news",
    None,
    "train",
)
AG_NEWS_TEST = Source(
    "AG News test", "ag_news", "test.jsonl", ("text", "label"), "fancyzhx/ag_news", None, "test"
)


def labelled_example(text: object, label: object, words: list[str], what: str) -> Example:
    """``text`` with the word of class index ``label`` as its answer (a bad index is an error)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(words):
        raise AdaInferError(
            f"{what}: label {label!r} is not a class index 0..{len(words) - 1} "
            f"(text {str(text)[:60]!r})",
            "fix that row of the data",
        )
    return Example(str(text).strip(), words[label])


def sst2_example(row: dict, words: list[str]) -> Example:
    """One SST-2 row (hub or local: ``sentence``, ``label`` 0/1).

    The text is stripped: the GLUE files end every sentence with a space, the local copy not.
    """
    return labelled_example(row["sentence"], row["label"], words, "SST-2")


def whole_sentences(rows: list[dict]) -> list[dict]:
    """The SST-2 train rows that are whole sentences: those whose text is part of no other row's.

    GLUE's SST-2 train split holds every phrase of the Stanford Sentiment Treebank's parse
    trees of its train sentences (67,349 rows), the sentences themselves among them; its
    validation split holds whole sentences only, and SST split its sentences into train, dev
    and test at random. A sentence is the one phrase of its tree that no other phrase contains,
    so these rows (6,885 here) are drawn like the validation sentences, and a calibration split
    held out of them is drawn like the test. Containment is by whole tokens (the text is
    tokenized, space-separated); order is kept.
    """
    texts = {str(r["sentence"]).strip() for r in rows}
    parts = set()
    for text in texts:
        tokens = text.split()
        n = len(tokens)
        for start in range(n):
            for end in range(start + 1, n + 1 if start else n):  # every span but the whole
                span = " ".join(tokens[start:end])
                if span in texts:
                    parts.add(span)
    return [r for r in rows if str(r["sentence"]).strip() not in parts]


def ag_news_example(row: dict, words: list[str]) -> Example:
    """One AG News row (hub or local: ``text`` = title + " " + description, ``label`` 0-3)."""
    return labelled_example(row["text"], row["label"], words, "AG News")


def check_label_words(task: str, words: list[str], default: list[str]) -> list[str]:
    """``words`` as a list of as many distinct, non-blank words as the task has classes."""
    words = [str(w) for w in words]
    if (
        len(words) != len(default)
        or len(set(words)) != len(words)
        or not all(w.strip() for w in words)
    ):
        raise AdaInferError(
            f"task {task!r}: label_words={words} must be {len(default)} distinct non-blank "
            f"words, one per class in class-index order",
            f"use e.g. task.label_words=[{','.join(default)}]",
        )
    return words


class _LabelWordsTask(DataTask):
    """A classification task whose answers are its ``label_words`` (one per class)."""

    label_words: list[str]
    _sources: ClassVar[tuple[Source, Source]]  # train, test

    def sources(self) -> tuple[str, str]:
        """Where the train and test rows come from (for messages)."""
        train, test = self._sources
        return origin([train], self.data_dir, self.name), origin([test], self.data_dir, self.name)

    @property
    def labels(self) -> list[str]:
        """The answer words, one per class."""
        return list(self.label_words)


@dataclass
class SST2Task(_LabelWordsTask):
    """SST-2 sentiment (GLUE): train = train (67,349 rows), test = validation (872).

    Answer: ``label_words[label]``, by default negative / positive. ``train_rows``: which train
    rows make the train split: ``phrases`` (all of them, as GLUE has it) or ``sentences``
    (only the whole sentences, :func:`whole_sentences`: drawn like the test sentences, so the
    calibration split can be held out of train, ``calibration_from: train``).
    """

    name: str = "sst2"
    label_words: list[str] = field(default_factory=lambda: list(SST2_WORDS))
    train_rows: str = "phrases"
    _sources = (SST2_TRAIN, SST2_TEST)

    def load(self) -> Splits:
        words = check_label_words(self.name, self.label_words, SST2_WORDS)
        if self.train_rows not in SST2_TRAIN_ROWS:
            raise AdaInferError(
                f"task {self.name!r}: train_rows={self.train_rows!r} is not one of "
                f"{list(SST2_TRAIN_ROWS)}",
                "use task.train_rows=phrases (every train row) or task.train_rows=sentences "
                "(the whole sentences only, drawn like the test split)",
            )
        rows = load_rows(SST2_TRAIN, self.data_dir, self.name)
        if self.train_rows == "sentences":
            rows = whole_sentences(rows)
        train = [sst2_example(r, words) for r in rows]
        test = [sst2_example(r, words) for r in load_rows(SST2_TEST, self.data_dir, self.name)]
        return sampled_splits(self, train, test, self.sources())


@dataclass
class AGNewsTask(_LabelWordsTask):
    """AG News topic: train = train (locally the 5,000-row subset), test = test (7,600 rows).

    Answer: ``label_words[label]``, by default World / Sports / Business / Sci/Tech; set
    ``label_words`` to ``AG_NEWS_FV_WORDS`` (… / Science) to match Function Vectors.
    """

    name: str = "ag_news"
    label_words: list[str] = field(default_factory=lambda: list(AG_NEWS_WORDS))
    _sources = (AG_NEWS_TRAIN, AG_NEWS_TEST)

    def load(self) -> Splits:
        words = check_label_words(self.name, self.label_words, AG_NEWS_WORDS)
        rows = load_rows(AG_NEWS_TRAIN, self.data_dir, self.name)
        train = [ag_news_example(r, words) for r in rows]
        rows = load_rows(AG_NEWS_TEST, self.data_dir, self.name)
        test = [ag_news_example(r, words) for r in rows]
        return sampled_splits(self, train, test, self.sources())
