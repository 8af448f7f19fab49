"""The Function Vectors tasks (Todd et al., 2024) from their JSON Lines files.

Layout: ``<data_dir>/function_vectors/{abstractive,extractive}/<name>.jsonl`` with rows
``{"input": str, "output": str}``. The split follows Function Vectors: 70% train, the rest split
70/30 into test and valid, shuffled with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adainfer.errors import AdaInferError
from adainfer.tasks.base import Example, Splits, check_examples, shuffled_split
from adainfer.tasks.data import DataTask, calibrated_splits, read_jsonl, resolve_data_dir

GROUPS = ("abstractive", "extractive")


def available_tasks(data_dir: str | Path | None = None) -> list[str]:
    """The sorted names of the Function Vectors tasks under ``data_dir``.

    ``data_dir`` is the data root or its ``function_vectors/`` folder; None reads
    ``$ADAINFER_DATA_DIR``. Lets a user or a sweep see which ``task.name`` values exist.
    """
    where = None if data_dir is None else str(data_dir)
    root = resolve_data_dir(where, "function_vectors", "function_vectors")
    return sorted(p.stem for group in GROUPS for p in (root / group).glob("*.jsonl"))


@dataclass
class FunctionVectorsTask(DataTask):
    """One Function Vectors task by name (e.g. ``antonym``, ``country-capital``)."""

    name: str

    @property
    def labels(self) -> None:
        """None: answers are treated as free text, even for the few tasks with a closed set."""
        return None

    available_tasks = staticmethod(available_tasks)

    def path(self) -> Path:
        root = resolve_data_dir(self.data_dir, "function_vectors", self.name)
        for group in GROUPS:
            candidate = root / group / f"{self.name}.jsonl"
            if candidate.is_file():
                return candidate
        raise AdaInferError(
            f"unknown Function Vectors task {self.name!r} (no {self.name}.jsonl under {root})",
            f"use one of {available_tasks(root)}",
        )

    def load_all(self) -> dict[str, list[Example]]:
        """All three Function Vectors splits: train, test, valid."""
        rows = read_jsonl(self.path(), ("input", "output"))
        examples = [Example(str(r["input"]), str(r["output"])) for r in rows]
        train, rest = shuffled_split(examples, (0.7,), self.split_seed)
        n_test = int(round(0.7 * len(rest)))
        return {"train": train, "test": rest[:n_test], "valid": rest[n_test:]}

    def load(self) -> Splits:
        parts = self.load_all()
        splits = calibrated_splits(self, parts["train"], parts["test"])
        source = str(self.path())
        check_examples(self.name, "train", splits.train, source)
        check_examples(self.name, "test", splits.test, source)
        return splits
