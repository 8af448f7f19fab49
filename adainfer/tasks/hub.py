"""Where a task's rows come from: the Hugging Face hub, or a local copy laid out like shared/data.

A task reads local JSON Lines when ``task.data_dir`` or ``$ADAINFER_DATA_DIR`` is set, and the
hub otherwise. Both give plain dict rows; each task turns them into Examples with one function
that accepts either schema, so the same row gives the same Example from both sources.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from adainfer.errors import AdaInferError
from adainfer.tasks.data import DATA_ENV, local_root, read_jsonl, resolve_data_dir

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set to a true value right now."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in OFFLINE_ENV)


@contextmanager
def _offline_flags() -> Iterator[None]:
    """Honour the offline variables even when they were set after ``datasets`` was imported.

    ``datasets`` and ``huggingface_hub`` read them once, at import time; a variable set later
    (in a notebook, or a test) would be ignored, and an offline machine would spend about 25 s
    in network retries before failing.
    """
    if not offline_requested():
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    flags = [
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
    ]
    saved = [getattr(module, name) for module, name in flags]
    for module, name in flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(flags, saved, strict=True):
            setattr(module, name, value)


def load_hub_split(
    hub_id: str, config: str | None, split: str, what: str, *, subdir: str | None = None
) -> list[dict]:
    """The rows of one split of a hub data set, as plain dicts.

    Any failure to reach or find the data (offline, no network, an unknown data set, config or
    split, a broken cache) becomes one :class:`AdaInferError` naming ``what`` is missing and how
    to use a local copy instead (``subdir`` is that copy's folder in the shared/data layout).
    """
    import datasets
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HTTPError

    try:
        with _offline_flags():
            dataset = datasets.load_dataset(hub_id, config, split=split)
    except (OSError, ValueError, DatasetsError, HTTPError) as err:
        where = hub_id if config is None else f"{hub_id}, config {config!r}"
        folder = f"the folder holding {subdir}/" if subdir else "a folder laid out like shared/data"
        fix = (
            f"use a local JSON Lines copy: pass task.data_dir=PATH or set {DATA_ENV}=PATH "
            f"({folder}; see shared/data/SOURCES.md)"
        )
        if offline_requested():
            fix += ", or go online and unset " + " / ".join(OFFLINE_ENV)
        raise AdaInferError(
            f"cannot load {what} from the Hugging Face hub ({where}, split {split!r}): "
            f"{type(err).__name__}: {err}",
            fix,
        ) from err
    return dataset.to_list()


@dataclass(frozen=True)
class Source:
    """One split of a data set: its local file and its place on the hub."""

    what: str  # for messages, e.g. "SST-2 train"
    subdir: str  # folder under the data directory, e.g. "sst2"
    file: str  # file under ``subdir``, e.g. "train.jsonl"
    required: tuple[str, ...]  # fields every local row must have
    hub_id: str
    hub_config: str | None
    hub_split: str


def origin(sources: list[Source], data_dir: str | None, task: str) -> str:
    """Where the rows of ``sources`` come from, for messages: the local file(s), else the
    hub data set(s)."""
    if local_root(data_dir) is None:
        named = [
            f"hub data set {s.hub_id}"
            + (f", config {s.hub_config!r}" if s.hub_config else "")
            + f", split {s.hub_split!r}"
            for s in sources
        ]
    else:
        named = [str(resolve_data_dir(data_dir, s.subdir, task) / s.file) for s in sources]
    if len(named) > 3:
        return f"{', '.join(named[:2])} and {len(named) - 2} more"
    return ", ".join(named)


def load_rows(source: Source, data_dir: str | None, task: str) -> list[dict]:
    """The split's rows: local JSON Lines when a data folder is set, else the hub."""
    if local_root(data_dir) is None:
        return load_hub_split(
            source.hub_id, source.hub_config, source.hub_split, source.what, subdir=source.subdir
        )
    folder = resolve_data_dir(data_dir, source.subdir, task)
    return read_jsonl(folder / source.file, source.required)
