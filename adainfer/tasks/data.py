"""Finding and reading local JSON Lines data (the layout of the project's shared/data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from adainfer.errors import AdaInferError

DATA_ENV = "ADAINFER_DATA_DIR"


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
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AdaInferError(
                    f"{path}:{lineno} is not valid JSON ({err.msg})", "fix or remove that line"
                ) from None
            missing = [key for key in required if key not in row]
            if missing:
                raise AdaInferError(
                    f"{path}:{lineno} lacks the field(s) {missing} (needs {list(required)})",
                    "fix that line of the data file",
                )
            rows.append(row)
    return rows
