"""Layer-trace store: run the LLM once per setting, evaluate every policy on the records.

A trace is the per-layer records of one split of one task under one model, prompt setting and
probe. It is stored as Parquet, named by a hash of exactly the settings that produced it plus
the model's identity and the token ids and gold tokens themselves, so a different setting can
never reuse it. Writes go to a temporary file renamed into place; a file that is truncated,
unreadable or does not match its key is deleted and recomputed. A store that cannot be written
(``read_only``, or a write that fails, e.g. on a full disk) still reads what it holds and hands
back the computed records, unstored, with a warning.

Several jobs may share one store (a sweep over processes or machines, ``traces.dir`` on a shared
folder): a job that misses a trace takes a lock on its key (:func:`adainfer.files.exclusive`,
``.locks/`` in the store), looks again, and only then computes it, so two jobs that need the
same trace run one LLM pass between them; the other waits and reads the stored file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adainfer.decide.records import RECORD_VERSION, LayerRecords
from adainfer.errors import AdaInferError
from adainfer.files import LOCKS, cannot_write, exclusive, share

if TYPE_CHECKING:  # a type only: reading traces back needs no tokenizer, and no torch
    from adainfer.llm.encoding import EncodedPrompts

log = logging.getLogger(__name__)

_META = b"adainfer.trace"
_HIDDEN = "hidden"  # the column of a trace's hidden states (when its key keeps them)


def data_digest(encoded: EncodedPrompts) -> str:
    """Hash of the exact model inputs and targets: token ids and gold tokens."""
    digest = hashlib.sha256()
    for ids in encoded.input_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    digest.update(encoded.gold.astype(np.int64).tobytes())
    return digest.hexdigest()


def label_key(label_ids: np.ndarray | None) -> str:
    """:attr:`TraceKey.labels` of a task's label tokens (None: "")."""
    return "" if label_ids is None else ",".join(str(int(t)) for t in label_ids)


@dataclass(frozen=True)
class TraceKey:
    """Everything that determines a trace's content."""

    model: str
    model_identity: str
    task: str
    split: str
    shots: int
    seed: int
    instances: int
    data: str  # data_digest of the encoded prompts
    precision: str = "default"  # weights dtype and trainer precision: both change the numbers
    probe: str = "logit_lens"
    record_version: str = RECORD_VERSION
    # How the hidden states are kept (features.HIDDEN_FORMAT); "" when the trace has none.
    hidden: str = ""
    # A task with fixed labels: their gold tokens, comma-separated (the trace then records the
    # label-row features, LABEL_FEATURES); "" for free answers.
    labels: str = ""

    def fields(self) -> dict:
        """What identifies the trace (its file name and the key stored in it). ``hidden`` and
        ``labels`` are left out when empty, so such a trace has the key older code gave it."""
        fields = asdict(self)
        for name in ("hidden", "labels"):
            if not fields[name]:
                del fields[name]
        return fields

    @property
    def label_ids(self) -> np.ndarray | None:
        return np.array([int(t) for t in self.labels.split(",")]) if self.labels else None

    def digest(self) -> str:
        payload = json.dumps(self.fields(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:32]


class TraceStore:
    """Parquet files under ``root``, one per :class:`TraceKey`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self.read_only = False  # set by check_writable: read, never write

    def check_writable(self) -> str | None:
        """Why the store cannot be written (it then becomes ``read_only``), or None if it can.

        Checked before the expensive pass, so a read-only cache costs no computed records.
        """
        problem = cannot_write(self.root)
        self.read_only = problem is not None
        return problem

    def path(self, key: TraceKey) -> Path:
        return self.root / f"{key.task}-{key.split}-{key.digest()}.parquet"

    def get(self, key: TraceKey) -> LayerRecords | None:
        """The stored records, or None if absent or damaged (a damaged file is removed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[_META])
            hidden = None
            if _HIDDEN in table.column_names:
                hidden = _hidden_from(table.column(_HIDDEN))
                table = table.drop_columns([_HIDDEN])
            records = LayerRecords.from_frame(table.to_pandas())
            records.label_ids = key.label_ids
            if key.hidden:
                if hidden is None:
                    raise ValueError("its key keeps hidden states and it has none")
                records.hidden = hidden.reshape(records.num_instances, records.num_layers, -1)
            if meta["key"] != key.fields() or records.num_instances != key.instances:
                raise ValueError("its key or size does not match")
            if meta["checksum"] != _checksum(records):
                raise ValueError("its content checksum does not match")
        except Exception as err:  # noqa: BLE001 - any damage means: recompute
            log.warning("trace %s is unusable (%s); recomputing it", path.name, err)
            with contextlib.suppress(OSError):  # a read-only store: it stays, recomputed each time
                path.unlink(missing_ok=True)
            return None
        return records

    def put(self, key: TraceKey, records: LayerRecords) -> Path | None:
        """Store atomically: readers see the whole file or none. None when it was not stored
        (a ``read_only`` store, or the write failed: warned, the caller keeps its records)."""
        if self.read_only:
            return None
        if bool(key.hidden) != (records.hidden is not None):
            raise ValueError(f"trace key hidden={key.hidden!r} and records.hidden disagree")
        table = pa.Table.from_pandas(records.to_frame(), preserve_index=False)
        if records.hidden is not None:
            table = table.append_column(_HIDDEN, _hidden_column(records.hidden))
        meta = {"key": key.fields(), "checksum": _checksum(records)}
        table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".trace-", suffix=".tmp", dir=self.root)
            os.close(fd)
            pq.write_table(table, tmp)
            share(Path(tmp))  # mkstemp made it 0600: a group sharing the cache could not read it
            os.replace(tmp, self.path(key))
        except OSError as err:
            log.warning(
                "could not store trace %s in %s (%s: %s); the run goes on with the computed "
                "records, unstored",
                self.path(key).name,
                self.root,
                type(err).__name__,
                err,
            )
            return None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)

    def get_or_compute(self, key: TraceKey, compute: Callable[[], LayerRecords]) -> LayerRecords:
        """The stored records, else ``compute()`` stored: under the key's lock, so of several
        jobs missing the same trace one computes it and the others read it (module docstring).
        """
        records = self.get(key)
        if records is None and not self.read_only:
            lock = self.root / LOCKS / f"{self.path(key).stem}.lock"
            with exclusive(lock, f"trace {self.path(key).name}"):
                records = self.get(key)  # stored by the job that held the lock meanwhile?
                if records is None:
                    return self._compute(key, compute)
        if records is None:
            return self._compute(key, compute)
        self.hits += 1
        return records

    def _compute(self, key: TraceKey, compute: Callable[[], LayerRecords]) -> LayerRecords:
        self.misses += 1
        records = compute()
        self.put(key, records)
        return records


def _hidden_column(hidden: np.ndarray) -> pa.Array:
    """[N, L, h] float16 as one fixed-size list per (instance, layer) row, in the frame's order
    (instance, then layer); the float16 bits as uint16, which every Parquet reader keeps."""
    h = hidden.shape[-1]
    bits = np.ascontiguousarray(hidden, dtype=np.float16).view(np.uint16).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(bits, pa.uint16()), h)


def _hidden_from(column: pa.ChunkedArray) -> np.ndarray:
    """What :func:`_hidden_column` wrote, back as float16 rows [N·L, h]."""
    column = column.combine_chunks()
    bits = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint16)
    return bits.view(np.float16).reshape(-1, column.type.list_size)


def _checksum(records: LayerRecords) -> str:
    digest = hashlib.sha256()
    for name in sorted(records.values):
        digest.update(np.ascontiguousarray(records.values[name], dtype=np.float32).tobytes())
    for array in (records.argmax, records.gold, records.seq_len):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    if records.hidden is not None:  # absent: the checksum older code wrote
        digest.update(np.ascontiguousarray(records.hidden, dtype=np.float16).tobytes())
    return digest.hexdigest()


# --- the trace index: what stage=decide reads ---------------------------------------------------

INDEX = "index"  # the store's folder of index entries


class NotExtracted(AdaInferError):
    """``stage=decide`` needs a trace (or tuned lens) that no extraction stored."""


@dataclass(frozen=True)
class StoredModel:
    """A model as its traces knew it: its name, identity, dtype and config, all that deciding
    needs of it (:class:`adainfer.decide.stage.ModelFacts`), without transformers."""

    name: str
    identity: str
    dtype: str
    config_dict: dict

    @classmethod
    def of(cls, loaded) -> StoredModel:
        """What the index keeps of a loaded model (``adainfer.llm.LoadedModel``)."""
        config = json.loads(json.dumps(loaded.config.to_dict(), default=str))
        return cls(loaded.name, loaded.identity, loaded.dtype, config)

    @property
    def config(self) -> SimpleNamespace:
        return SimpleNamespace(**self.config_dict)

    @property
    def num_layers(self) -> int:
        return self.config_dict["num_hidden_layers"]

    @property
    def hidden_size(self) -> int:
        return self.config_dict["hidden_size"]

    @property
    def vocab_size(self) -> int:
        return self.config_dict["vocab_size"]


@dataclass(frozen=True)
class StoredLens:
    """A tuned lens as the index names it: its price per read (for the costs) and its folder in
    the lens store, copied beside a policy when a run saves one."""

    name: str
    folder: Path
    price: float

    def flops(self) -> float:
        return self.price

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("probe.json", "probe.safetensors"):
            shutil.copyfile(self.folder / name, folder / name)


@dataclass
class IndexEntry:
    """One task's traces under one job setting (:func:`adainfer.compose.resume.traces_hash`):
    the keys of the records its policy is fitted on (in order), of its test and calibration
    splits, the lens that read them, the models, the prompt counts and statistics."""

    task: str
    fit: list[dict]
    test: dict
    calibration: dict | None
    model: dict
    fit_model: dict | None
    lens: dict | None  # {"name", "folder" (relative to the store), "flops"}; None: logit lens
    counts: dict[str, int]
    stats: dict[str, float]


class TraceIndex:
    """``<store>/index/<digest>.json``: what a job's extraction stored for one task, so that
    ``stage=decide`` finds its traces from the config and the data alone, with no tokenizer or
    model. Written after every extraction that stores traces; a calibration trace an entry lacks
    is kept from the entry it replaces."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store

    def path(self, digest: str) -> Path:
        return self.store.root / INDEX / f"{digest}.json"

    def read(self, digest: str) -> IndexEntry | None:
        try:
            return IndexEntry(**json.loads(self.path(digest).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, digest: str, entry: IndexEntry) -> None:
        if self.store.read_only:
            return
        before = self.read(digest)
        if entry.calibration is None and before is not None and before.calibration is not None:
            entry.calibration = before.calibration  # the same settings: the same split
            entry.counts = entry.counts | {"n_calibration": before.counts["n_calibration"]}
        path = self.path(digest)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(entry), out, indent=1, sort_keys=True)
            share(Path(tmp))
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not write the trace index %s (%s)", path, err)

    def records(self, fields: dict, what: str, hidden: bool = False) -> LayerRecords:
        """The stored records of an index entry's key, or :class:`NotExtracted` naming ``what``."""
        key = TraceKey(**fields)
        found = self.store.get(key) if key.record_version == RECORD_VERSION else None
        if found is None:
            raise self.missing(what, hidden)
        return found

    def missing(self, what: str, hidden: bool = False) -> NotExtracted:
        """The error for a trace (or lens) that ``stage=decide`` needs and no extraction stored:
        the fix names the extraction that stores it."""
        states = " and a classifier that reads hidden states, e.g. classifier=state"
        return NotExtracted(
            f"stage=decide found no stored {what} in {self.store.root}",
            "extract it first: the same job with stage=extract (same model, task, sizes, shots, "
            f"seed, probe and traces.dir{states if hidden else ''}), or run it whole with "
            "stage=all. Traces stored by an adainfer older than the trace index are indexed by "
            "that stage=extract without any LLM pass",
        )
