"""What every task hands to the pipeline: examples split into train and test."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from adainfer.errors import AdaInferError


@dataclass(frozen=True)
class Example:
    """One instance: the query text ``input`` and its gold answer ``output``."""

    input: str
    output: str


@dataclass
class Splits:
    """Train (fits the exit classifier and supplies demonstrations), test (evaluated) and, when
    asked for, calibration (held out from train; sets risk-controlled thresholds)."""

    train: list[Example]
    test: list[Example]
    calibration: list[Example] = field(default_factory=list)


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


def hold_out(
    task: str, pool: list[Example], n_train: int | None, n_calibration: int
) -> tuple[list[Example], list[Example]]:
    """The train sample (the first ``n_train`` of the shuffled ``pool``) and, right after it, up
    to ``n_calibration`` held-out instances for calibration: never a train instance, so never a
    demonstration."""
    if n_calibration < 0:
        raise AdaInferError(f"task.n_calibration={n_calibration} is negative", "use 0 or more")
    train = cap(pool, n_train)
    if not n_calibration:
        return train, []
    if n_train is None:
        raise AdaInferError(
            f"task {task!r}: task.n_calibration needs held-out train instances, but n_train is "
            "unset, so the whole train split is used for fitting",
            "set task.n_train too (e.g. task.n_train=200 task.n_calibration=500)",
        )
    calibration = pool[len(train) : len(train) + n_calibration]
    if not calibration:
        raise AdaInferError(
            f"task {task!r}: all {len(pool)} train instances are in the train sample "
            f"(n_train={n_train}); none are left for calibration",
            "lower task.n_train",
        )
    return train, calibration
