"""What every task hands to the pipeline: examples split into train and test."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from adainfer.errors import AdaInferError


@dataclass(frozen=True)
class Example:
    """One instance: the query text ``input`` and its gold answer ``output``."""

    input: str
    output: str


@dataclass
class Splits:
    """Train (fits the exit classifier and supplies demonstrations) and test (evaluated)."""

    train: list[Example]
    test: list[Example]


class Task(Protocol):
    """A task is data: where examples come from and how they are split (see conf/task/)."""

    name: str

    def load(self) -> Splits: ...


def check_examples(task: str, split: str, examples: list[Example]) -> None:
    """Fail early, with the instance named, on an empty split or an empty answer."""
    if not examples:
        raise AdaInferError(
            f"task {task!r}: the {split} split is empty",
            "check the data files, or raise task.n_train / task.n_test",
        )
    for i, ex in enumerate(examples):
        if not ex.output.strip():
            raise AdaInferError(
                f"task {task!r}: {split} instance {i} (input {ex.input[:60]!r}) has an empty "
                "answer, which tokenizes to nothing, so there is no gold token to score",
                "remove or fix that instance in the data",
            )


def shuffled_split(
    examples: list[Example], fractions: tuple[float, ...], seed: int
) -> list[list[Example]]:
    """Shuffle with ``seed`` and cut into consecutive parts of the given fractions."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for frac in fractions:
        end = start + int(round(frac * len(order)))
        parts.append(order[start:end])
        start = end
    parts.append(order[start:])
    return parts


def cap(examples: list[Example], n: int | None) -> list[Example]:
    """The first ``n`` examples (all when ``n`` is None)."""
    return examples if n is None else examples[:n]
