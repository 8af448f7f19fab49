"""Rule understanding generated in code: ``next_item`` / ``prev_item`` over ordered lists.

Needs no data files, so the default job runs anywhere. The sequences are words and letters
only. Digits were once left out because tokenizers like SmolLM2's and Gemma-3's split " 5" into
a bare space and "5"; the encoder now ends such a prompt with that space and scores "5" (see
:func:`adainfer.llm.encoding.answer_start`), so a digit sequence could be added.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example, Splits, cap, check_examples, hold_out, shuffled_split
from adainfer.tasks.prompts import PromptTemplate

_NUMBER_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

# (items, cyclic): weekdays and months wrap around, letters and numbers do not.
SEQUENCES: dict[str, tuple[list[str], bool]] = {
    "lowercase_letters": (list(string.ascii_lowercase), False),
    "uppercase_letters": (list(string.ascii_uppercase), False),
    "number_words": (_NUMBER_WORDS, False),
    "weekdays": (_WEEKDAYS, True),
    "months": (_MONTHS, True),
}
RULES = ("next_item", "prev_item")


def rule_examples(rule: str, sequences: list[str]) -> list[Example]:
    """All (item, neighbour) pairs of the chosen sequences under ``rule``."""
    if rule not in RULES:
        raise AdaInferError(f"unknown rule {rule!r}", f"use one of {list(RULES)}")
    unknown = sorted(set(sequences) - set(SEQUENCES))
    if unknown:
        raise AdaInferError(f"unknown sequences {unknown}", f"use some of {sorted(SEQUENCES)}")
    examples = []
    for name in sequences:
        items, cyclic = SEQUENCES[name]
        pairs = list(zip(items, items[1:], strict=False))
        if cyclic:
            pairs.append((items[-1], items[0]))
        for a, b in pairs:
            examples.append(Example(a, b) if rule == "next_item" else Example(b, a))
    return examples


@dataclass
class RuleTask:
    """Generated ``next_item`` / ``prev_item``; a seeded split into train and test."""

    name: str = "next_item"
    rule: str = "next_item"
    sequences: tuple[str, ...] = tuple(SEQUENCES)
    train_fraction: float = 0.5
    split_seed: int = 0
    n_train: int | None = None
    n_test: int | None = None
    n_calibration: int = 0  # held-out train instances for risk control
    template: PromptTemplate = field(default_factory=PromptTemplate)

    def load(self) -> Splits:
        examples = rule_examples(self.rule, list(self.sequences))
        pool, test = shuffled_split(examples, (self.train_fraction,), self.split_seed)
        train, calibration = hold_out(self.name, pool, self.n_train, self.n_calibration)
        splits = Splits(train, cap(test, self.n_test, self.name, "test"), calibration)
        source = f"sequences {list(self.sequences)} under rule {self.rule!r}, generated in code"
        check_examples(self.name, "train", splits.train, source)
        check_examples(self.name, "test", splits.test, source)
        return splits
