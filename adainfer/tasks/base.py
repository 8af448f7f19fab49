"""What every task hands to the pipeline: examples split into train and test."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Protocol

from adainfer.errors import AdaInferError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One instance: the query text ``input`` and its gold answer ``output`` (whose first token
    is scored); ``answers``: every accepted answer, where there are several (SQuAD's annotators),
    for scoring generated text."""

    input: str
    output: str
    answers: tuple[str, ...] = ()

    @property
    def golds(self) -> tuple[str, ...]:
        """The answers a generated text is compared with: ``answers``, else ``output``."""
        return self.answers or (self.output,)


@dataclass
class Splits:
    """Train (fits the exit classifier and supplies demonstrations), test (evaluated) and, when
    asked for, calibration (held out from train; sets risk-controlled thresholds) and fit (held
    out from train after calibration; the exit classifier is fitted on it too, ``task.n_fit``).
    """

    train: list[Example]
    test: list[Example]
    calibration: list[Example] = field(default_factory=list)
    fit: list[Example] = field(default_factory=list)


class Task(Protocol):
    """A task is data: where examples come from and how they are split (see conf/task/)."""

    name: str

    def load(self) -> Splits: ...


def check_examples(
    task: str, split: str, examples: list[Example], source: str | None = None
) -> None:
    """Fail early, with the instance named, on an empty split or an empty answer.

    ``source`` says where the split was read from (a file, a hub data set) for the message.
    """
    if not examples:
        origin = f" (read from {source})" if source else ""
        raise AdaInferError(
            f"task {task!r}: the {split} split is empty{origin}",
            "check that data, or raise task.n_train / task.n_test",
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


def cap(
    examples: list[Example], n: int | None, task: str | None = None, split: str = "test"
) -> list[Example]:
    """The first ``n`` examples (all when ``n`` is None). Named by ``task``, it warns when
    fewer than ``n`` exist, since the run then silently uses fewer than asked for."""
    if task is not None and n is not None and 0 < len(examples) < n:
        log.warning(
            "task %r: task.n_%s=%d asks for more %s instances than the %d available; using all %d",
            task,
            split,
            n,
            split,
            len(examples),
            len(examples),
        )
    return examples if n is None else examples[:n]


def fitting_sizes(available: int, n_calibration: int) -> str:
    """Concrete ``task.n_train`` / ``task.n_calibration`` that fit ``available`` train
    instances, keeping ``n_calibration`` when it leaves some for training, else halving."""
    if available < 2:
        return (
            f"the task has {available} train instance(s), too few to hold any out: "
            "use more data, or task.n_calibration=0"
        )
    if n_calibration < available:
        n_train, n_cal = available - n_calibration, n_calibration
    else:
        n_train, n_cal = available - available // 2, available // 2
    return (
        f"e.g. task.n_train={n_train} task.n_calibration={n_cal} "
        f"(together at most the {available} train instances)"
    )


def hold_out(
    task: str, pool: list[Example], n_train: int | None, n_calibration: int
) -> tuple[list[Example], list[Example]]:
    """The train sample (the first ``n_train`` of the shuffled ``pool``) and, right after it, up
    to ``n_calibration`` held-out instances for calibration: never a train instance, so never a
    demonstration."""
    if n_calibration < 0:
        raise AdaInferError(f"task.n_calibration={n_calibration} is negative", "use 0 or more")
    train = cap(pool, n_train, task, "train")
    if not n_calibration:
        return train, []
    if n_train is None:
        raise AdaInferError(
            f"task {task!r}: task.n_calibration needs held-out train instances, but n_train is "
            "unset, so the whole train split is used for fitting",
            f"set task.n_train too: {fitting_sizes(len(pool), n_calibration)}",
        )
    calibration = pool[len(train) : len(train) + n_calibration]
    if not calibration:
        raise AdaInferError(
            f"task {task!r}: all {len(pool)} train instances are in the train sample "
            f"(n_train={n_train}); none are left for calibration "
            f"(n_calibration={n_calibration})",
            f"lower task.n_train: {fitting_sizes(len(pool), n_calibration)}",
        )
    if len(calibration) < n_calibration:
        log.warning(
            "task %r: task.n_calibration=%d asks for more than the %d train instances left "
            "after the train sample (n_train=%d); using %d. Sizes that fit: %s",
            task,
            n_calibration,
            len(calibration),
            n_train,
            len(calibration),
            fitting_sizes(len(pool), n_calibration),
        )
    return train, calibration
