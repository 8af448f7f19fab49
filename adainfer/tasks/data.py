"""Finding and reading local JSON Lines data (the layout of the project's shared/data).

A task reads local files when ``task.data_dir`` or ``$ADAINFER_DATA_DIR`` is set and the
Hugging Face hub otherwise (see :mod:`adainfer.tasks.hub`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from adainfer.choices import CALIBRATION_SOURCES, TEST_SOURCES
from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example, Splits, cap, check_examples, hold_out, shuffled_split
from adainfer.tasks.prompts import PromptTemplate

log = logging.getLogger(__name__)

DATA_ENV = "ADAINFER_DATA_DIR"


def local_root(data_dir: str | None) -> str | None:
    """The local data folder a task should read (``data_dir``, else ``$ADAINFER_DATA_DIR``).

    None means no local copy was asked for, so tasks that have one load from the hub instead.
    """
    return data_dir or os.environ.get(DATA_ENV) or None


def resolve_data_dir(data_dir: str | None, subdir: str, task: str) -> Path:
    """``data_dir`` (or ``$ADAINFER_DATA_DIR``) joined with ``subdir``, which must exist.

    ``data_dir`` may also point straight at ``subdir`` itself.
    """
    root = data_dir or os.environ.get(DATA_ENV)
    if not root:
        raise AdaInferError(
            f"task {task!r} reads local data, but no data directory is set",
            f"pass task.data_dir=/path/to/data (the folder holding {subdir}/) or set {DATA_ENV}",
        )
    root_path = Path(root).expanduser()
    for candidate in (root_path / subdir, root_path):
        if candidate.name == subdir and candidate.is_dir():
            return candidate
    raise AdaInferError(
        f"task {task!r}: no data directory {root_path / subdir}",
        f"pass task.data_dir=PATH or set {DATA_ENV} to a folder that holds {subdir}/",
    )


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON Lines file; each must have the ``required`` fields."""
    if not path.is_file():
        raise AdaInferError(
            f"no data file {path}",
            f"point task.data_dir (or {DATA_ENV}) at a folder laid out like shared/data "
            "(see shared/data/SOURCES.md)",
        )
    rows = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise AdaInferError(
                    f"{path}:{lineno}, byte {err.start + 1}: not UTF-8 text "
                    f"({raw[err.start : err.start + 1]!r} {err.reason})",
                    "re-save the file as UTF-8, or fix that line",
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AdaInferError(
                    f"{path}:{lineno}, column {err.colno}: not valid JSON ({err.msg})",
                    "fix or remove that line",
                ) from None
            if not isinstance(row, dict):
                raise AdaInferError(
                    f"{path}:{lineno}: a JSON {type(row).__name__}, not an object with the "
                    f"fields {list(required)}",
                    "make each line one JSON object",
                )
            missing = [key for key in required if key not in row]
            if missing:
                raise AdaInferError(
                    f"{path}:{lineno} lacks the field(s) {missing} (needs {list(required)})",
                    "fix that line of the data file",
                )
            rows.append(row)
    return rows


def sampled_splits(
    task: DataTask,
    train: list[Example],
    test: list[Example],
    sources: tuple[str | None, str | None] = (None, None),
) -> Splits:
    """Both splits shuffled with ``task.split_seed``, capped at ``n_train`` / ``n_test``, with
    ``n_calibration`` held-out train instances after the train sample, and checked.
    ``sources`` say where each split was read from (a file, a hub data set), for messages.

    Shuffling before the cap makes a cap a seeded random sample: the data files are ordered by
    subject (MMLU) or article (SQuAD), so their first rows would cover a single topic.
    """
    pool = shuffled_split(train, (), task.split_seed)[0]
    tests = shuffled_split(test, (), task.split_seed)[0]
    splits = calibrated_splits(task, pool, tests)
    check_examples(task.name, "train", splits.train, sources[0])
    check_examples(task.name, "test", splits.test, sources[0 if task.test_from == "train" else 1])
    return splits


def calibrated_splits(task: DataTask, pool: list[Example], tests: list[Example]) -> Splits:
    """The train sample of ``pool`` (capped at ``n_train``), the test split (capped at
    ``n_test``) and the calibration split, held out after the train sample or carved out of
    ``tests`` first, as ``task.calibration_from`` says. ``task.test_from: train`` takes the
    test split from ``pool`` too, right after the train sample and the calibration split (the
    fit split, if any, comes after it): for a task whose test split is too small to measure a
    1-point drop (SST-2's 872 sentences), with train rows drawn like it."""
    if test_source(task) == "train":
        if calibration_source(task) == "test":
            raise AdaInferError(
                f"task {task.name!r}: test_from=train with calibration_from=test would calibrate "
                "on rows drawn from another split than the ones tested",
                "use task.calibration_from=train with task.test_from=train",
            )
        if task.n_test is None:
            raise AdaInferError(
                f"task {task.name!r}: test_from=train needs task.n_test, the number of train "
                "instances to test on",
                "set task.n_test too, e.g. task.n_test=2000",
            )
        if task.n_train is None:
            raise AdaInferError(
                f"task {task.name!r}: test_from=train needs held-out train instances, but "
                "n_train is unset, so the whole train split is the train sample",
                f"set task.n_train too, e.g. task.n_train=100 task.n_test={task.n_test}",
            )
        train, calibration = hold_out(task.name, pool, task.n_train, task.n_calibration)
        used = len(train) + len(calibration)
        tests = cap(pool[used:], task.n_test, task.name, "test")
        if not tests:
            raise AdaInferError(
                f"task {task.name!r}: none of its {len(pool)} train instances is left for "
                f"test_from=train after the train sample and the calibration split ({used})",
                "lower task.n_train or task.n_calibration, or use task.test_from=test",
            )
        return Splits(train, tests, calibration, held_out_fit(task, pool, used + len(tests)))
    if calibration_source(task) == "test":
        train = cap(pool, task.n_train, task.name, "train")
        calibration, tests = held_out_test(task, tests)
        used = len(train)
    else:
        train, calibration = hold_out(task.name, pool, task.n_train, task.n_calibration)
        used = len(train) + len(calibration)
    fit = held_out_fit(task, pool, used)
    return Splits(train, cap(tests, task.n_test, task.name, "test"), calibration, fit)


def held_out_fit(task: DataTask, pool: list[Example], used: int) -> list[Example]:
    """``task.n_fit``: the train instances right after the first ``used`` of the shuffled
    ``pool`` (the train sample, then the calibration split when it is held out of train), so
    never a demonstration nor a calibration instance, and adding them changes neither split.
    The exit classifier is fitted on them as well as on the train sample."""
    n = task.n_fit
    if n < 0:
        raise AdaInferError(f"task.n_fit={n} is negative", "use 0 or more")
    if not n:
        return []
    if task.n_train is None:
        raise AdaInferError(
            f"task {task.name!r}: task.n_fit needs held-out train instances, but n_train is "
            "unset, so the whole train split is already the train sample",
            f"set task.n_train too, e.g. task.n_train=100 task.n_fit={n}",
        )
    fit = pool[used : used + n]
    if not fit:
        raise AdaInferError(
            f"task {task.name!r}: none of its {len(pool)} train instances is left for "
            f"task.n_fit={n} after the train sample and the calibration split ({used})",
            "lower task.n_train or task.n_calibration, or use task.n_fit=0",
        )
    if len(fit) < n:
        log.warning(
            "task %r: task.n_fit=%d asks for more than the %d train instances left after the "
            "train sample and the calibration split; using %d",
            task.name,
            n,
            len(fit),
            len(fit),
        )
    return fit


def calibration_source(task: DataTask) -> str:
    """``task.calibration_from``, checked: ``train`` or ``test``."""
    if task.calibration_from not in CALIBRATION_SOURCES:
        raise AdaInferError(
            f"task {task.name!r}: calibration_from={task.calibration_from!r} is not one of "
            f"{list(CALIBRATION_SOURCES)}",
            "use task.calibration_from=train (held out of the train split) or "
            "task.calibration_from=test (carved out of the test split)",
        )
    return task.calibration_from


def test_source(task: DataTask) -> str:
    """``task.test_from``, checked: ``test`` (the task's test split) or ``train``."""
    if task.test_from not in TEST_SOURCES:
        raise AdaInferError(
            f"task {task.name!r}: test_from={task.test_from!r} is not one of {list(TEST_SOURCES)}",
            "use task.test_from=test (the task's test split) or task.test_from=train (held out "
            "of the train split after the train sample and the calibration split)",
        )
    return task.test_from


def held_out_test(task: DataTask, tests: list[Example]) -> tuple[list[Example], list[Example]]:
    """``calibration_from: test``: the first ``n_calibration`` of the shuffled test split as
    the calibration split, and the rest as the test pool, so both are drawn from one
    distribution (what risk control's guarantee assumes). The test cap applies to the rest."""
    n = task.n_calibration
    if n >= len(tests):
        raise AdaInferError(
            f"task {task.name!r}: task.n_calibration={n} with calibration_from=test leaves none "
            f"of the {len(tests)} test instances for testing",
            f"lower task.n_calibration below {len(tests)} (e.g. {len(tests) // 2}), or use "
            "task.calibration_from=train",
        )
    return tests[:n], tests[n:]


@dataclass(kw_only=True)
class DataTask:
    """The settings every data-backed task shares (keys of conf/task/*.yaml)."""

    data_dir: str | None = None  # local JSONL root; None: $ADAINFER_DATA_DIR, else the hub
    split_seed: int = 42  # shuffles the splits before the caps
    n_train: int | None = None  # cap on train instances (None: all)
    n_test: int | None = None  # cap on test instances (None: all)
    n_calibration: int = 0  # held-out train instances for risk control (after the train sample)
    # Held-out train instances (after the train sample and calibration) the exit classifier is
    # fitted on as well: more training pairs without changing any prompt's demonstrations.
    n_fit: int = 0
    # Where the calibration split comes from: ``train`` (held out after the train sample) or
    # ``test`` (the first n_calibration of the shuffled test split, the rest is tested): use
    # ``test`` when the train split is not drawn like the test split (SST-2: phrases vs.
    # sentences), since risk control's guarantee holds for data drawn like the calibration.
    calibration_from: str = "train"
    # Where the test split comes from: ``test`` (the task's own) or ``train`` (the n_test train
    # instances after the train sample and the calibration split; needs calibration_from=train).
    test_from: str = "test"
    template: PromptTemplate = field(default_factory=PromptTemplate)
    # Also generate the test answers and score them as text (adainfer.run.generation): tasks
    # whose answers are free text (SQuAD, Function Vectors); at most max_new_tokens each.
    generate: bool = False
    max_new_tokens: int = 16
    # How a generated answer is scored: "exact" (as written, less outer whitespace) or "squad"
    # (SQuAD's normalized exact match and token F1): adainfer.tasks.answer_match.
    text_scores: ClassVar[str] = "exact"
