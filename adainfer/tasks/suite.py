"""Task groups evaluated together and averaged, as the paper's "Avg" columns are."""

from __future__ import annotations

from dataclasses import dataclass, field

from adainfer.tasks.base import Task
from adainfer.tasks.function_vectors import FunctionVectorsTask
from adainfer.tasks.prompts import PromptTemplate


@dataclass
class Suite:
    """Named member tasks; each is run and logged on its own, then averaged."""

    name: str
    tasks: dict[str, Task] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Key members by their own names, whatever the config called them.
        self.tasks = {task.name: task for task in self.tasks.values()}


def function_vectors_suite(
    name: str,
    tasks: list[str],
    data_dir: str | None = None,
    split_seed: int = 42,
    n_train: int | None = None,
    n_test: int | None = None,
    n_calibration: int = 0,
    n_fit: int = 0,
    calibration_from: str = "train",
    test_from: str = "test",
    template: PromptTemplate | None = None,
    generate: bool = False,
    max_new_tokens: int = 16,
) -> Suite:
    """A suite of Function Vectors tasks chosen by name (the rule-understanding group)."""
    members = {
        task: FunctionVectorsTask(
            name=task,
            data_dir=data_dir,
            split_seed=split_seed,
            n_train=n_train,
            n_test=n_test,
            n_calibration=n_calibration,
            n_fit=n_fit,
            calibration_from=calibration_from,
            test_from=test_from,
            template=template or PromptTemplate(),
            generate=generate,
            max_new_tokens=max_new_tokens,
        )
        for task in tasks
    }
    return Suite(name, members)
