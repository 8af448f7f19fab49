"""Stage one, *extract*: run the LLM over a task's prompts and keep what each layer read.

A :class:`~adainfer.decide.stage.TraceSet` is everything one task's decision stage reads: the layer
records of the prompts the policy is fitted on, of the test prompts and (when asked) of the
calibration prompts, the probe that read them and the model's dimensions. :class:`Extractor` builds
it from the trace store when the same setting ran before, else with one LLM pass per split
(:mod:`adainfer.extract.passes`) and stores it, so each trace is computed once per key, and
records in the trace index where it is (``stage=decide`` reads it from there, with no model:
:mod:`adainfer.run.stored`).

The prompts come first (:class:`TaskPrompts`, :func:`encode_task`): they are built and tokenized
before any run opens, so a prompt problem costs no half-logged run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.records import HIDDEN_FORMAT, LayerRecords
from adainfer.decide.stage import Outcome, TraceSet, score
from adainfer.extract.passes import extract_records, extract_records_multi
from adainfer.extract.store import (
    IndexEntry,
    StoredModel,
    TraceIndex,
    TraceKey,
    TraceStore,
    data_digest,
    label_key,
)
from adainfer.llm import cache
from adainfer.llm.encoding import (
    EncodedPrompts,
    check_label_tokens,
    encode_prompts,
    label_tokens,
)
from adainfer.llm.lenses import Lens, LensStore, LogitLens, TunedLens, fit_tuned_lens
from adainfer.llm.loading import LoadedModel
from adainfer.tasks.base import Splits, Task
from adainfer.tasks.prompts import build_prompts

log = logging.getLogger(__name__)


# --- prompts ---------------------------------------------------------------------------------


def _encode(
    task: Task,
    examples: list,
    demos: list,
    loaded: LoadedModel,
    shots: int,
    seed: int,
    max_length: int | None,
) -> EncodedPrompts:
    """``examples`` as prompts with ``shots`` demonstrations drawn from ``demos``, tokenized."""
    prompts = build_prompts(examples, demos, shots, seed, getattr(task, "template", None))
    length = min(max_length or loaded.max_length, loaded.max_length)
    encoded = encode_prompts(loaded.tokenizer, prompts, length)
    labels = getattr(task, "labels", None)
    if labels:  # a fixed answer set: its rows of the LM head are what a label-row read reads
        encoded.label_ids = np.array(label_tokens(loaded.tokenizer, list(labels)), dtype=np.int64)
    return encoded


def prepare(
    task: Task,
    splits: Splits,
    loaded: LoadedModel,
    shots: int,
    seed: int,
    max_length: int | None = None,
) -> tuple[EncodedPrompts, EncodedPrompts]:
    """Prompts for both splits, tokenized, with their gold tokens (checked before any run)."""
    labels = getattr(task, "labels", None)
    if labels:
        check_label_tokens(loaded.tokenizer, list(labels), task.name)
    return (
        _encode(task, splits.train, splits.train, loaded, shots, seed, max_length),
        _encode(task, splits.test, splits.train, loaded, shots, seed + 1, max_length),
    )


# Each split's demonstrations are drawn with a seed of its own (the test split's: seed + 1).
_HELD_OUT_SEEDS = {"calibration": 2, "fit": 3}


def prepare_held_out(
    task: Task,
    splits: Splits,
    split: str,
    loaded: LoadedModel,
    shots: int,
    seed: int,
    max_length: int | None = None,
) -> EncodedPrompts:
    """Prompts of a split held out of train, ``calibration`` or ``fit`` (``task.n_fit``), with
    demonstrations from the train sample, as for test."""
    examples, offset = getattr(splits, split), _HELD_OUT_SEEDS[split]
    return _encode(task, examples, splits.train, loaded, shots, seed + offset, max_length)


def evaluate(
    loaded: LoadedModel,
    policy: ExitPolicy,
    train: EncodedPrompts,
    test: EncodedPrompts,
    batch_size: int,
    trainer_kwargs: dict | None = None,
) -> Outcome:
    """Probe every layer of both splits, fit the policy on train, score it on test."""
    train_records = extract_records(loaded, train, batch_size, trainer_kwargs)
    test_records = extract_records(loaded, test, batch_size, trainer_kwargs)
    return score(policy, train_records, test_records, loaded)


@dataclass
class FitSource:
    """Prompts the policy is fitted on: of ``task``'s ``split`` (its train sample, or its fit
    split, ``task.n_fit``), for ``model`` (the evaluated model, or ``fit.model``), read through
    that model's probe."""

    task: str
    prompts: EncodedPrompts
    other_model: bool = False
    split: str = "train"


@dataclass
class TaskPrompts:
    """One task's tokenized prompts: train and test, calibration when it is needed, and where the
    policy's training pairs come from (its own train prompts, or ``fit.tasks`` / ``fit.model``).
    ``lens_train`` are the train prompts a tuned lens of ``fit.model`` is fitted on."""

    task: str
    train: EncodedPrompts
    test: EncodedPrompts
    calibration: EncodedPrompts | None
    fit: list[FitSource]
    lens_train: EncodedPrompts | None = None  # fit.model's tuned lens: this task, that model

    def counts(self) -> dict[str, int]:
        """How many prompts each split has (calibration: 0 when none is built; fit: the fit
        split's, ``task.n_fit``), logged with every run."""
        return {
            "n_train": len(self.train.input_ids),
            "n_test": len(self.test.input_ids),
            "n_calibration": len(self.calibration.input_ids) if self.calibration else 0,
            "n_fit": sum(len(s.prompts.input_ids) for s in self.fit if s.split == "fit"),
        }

    def stats(self) -> dict[str, float]:
        """What prompt building had to do, logged with every run."""
        parts = (self.train, self.test)
        return {
            "prompts_truncated": float(sum(p.truncated for p in parts)),
            "demos_dropped": float(sum(p.dropped_demos for p in parts)),
            "answers_space_prefixed": float(sum(p.space_prefixed for p in parts)),
        }


# --- traces ----------------------------------------------------------------------------------


class Extractor:
    """Layer records of (model, task, split, probe) from the trace store, else one LLM pass;
    tuned lenses likewise from their cache, else fitted on the train prompts.

    ``settings`` is the job's: ``shots``, ``seed``, ``batch_size``, ``trainer`` (Lightning
    kwargs), ``precision`` (the trainer's), ``probe`` (its config: ``name``, ``ridge``),
    ``traces_dir``, ``traces_enabled`` and ``hidden_states`` (whether the records must keep
    the last token's hidden state at every layer: the policy reads them,
    ``ExitPolicy.reads_hidden``; such traces have keys of their own).
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.hidden_states = bool(settings.get("hidden_states", False))
        self.trainer_kwargs = {k: v for k, v in settings["trainer"].items() if v is not None}
        root = Path(settings["traces_dir"] or cache.cache_root() / "traces")
        self.store = TraceStore(root) if settings["traces_enabled"] else None
        self.lenses = LensStore(root.parent / "probes") if self.store else None
        # Checked before any LLM pass: an unwritable cache is read, not written
        # (docs/CONFIGURATION.md), instead of failing after the pass and losing its records.
        self.tags: dict[str, str] = {}
        lenses = self.lenses if settings["probe"]["name"] == "tuned" else None
        for store in (s for s in (self.store, lenses) if s is not None):
            problem = store.check_writable()
            if problem:
                self.tags["trace_store"] = "read-only"
                log.warning(
                    "cache folder %s is not writable (%s): this run reads what it holds but "
                    "stores nothing new. Fix: pass traces.dir=A_WRITABLE_FOLDER, or "
                    "traces.enabled=false, or make %s writable",
                    store.root,
                    problem,
                    store.root,
                )

    def _precision(self, loaded: LoadedModel) -> str:
        return f"{loaded.dtype}|{self.settings['precision']}"

    def records(
        self,
        loaded: LoadedModel,
        task: str,
        split: str,
        encoded: EncodedPrompts,
        probe: Lens | None = None,
    ) -> LayerRecords:
        return self._keyed(loaded, task, split, encoded, probe)[0]

    def _keyed(
        self,
        loaded: LoadedModel,
        task: str,
        split: str,
        encoded: EncodedPrompts,
        probe: Lens | None = None,
    ) -> tuple[LayerRecords, TraceKey]:
        """:meth:`records`, and the key they are stored under."""
        probe = probe or LogitLens()

        def key(probe: Lens, hidden: bool = self.hidden_states) -> TraceKey:
            return TraceKey(
                model=loaded.name,
                model_identity=loaded.identity,
                task=task,
                split=split,
                shots=self.settings["shots"],
                seed=self.settings["seed"],
                instances=len(encoded.input_ids),
                data=data_digest(encoded),
                precision=self._precision(loaded),
                probe=probe.fingerprint,
                hidden=HIDDEN_FORMAT if hidden else "",
                labels=label_key(encoded.label_ids),
            )

        def compute() -> LayerRecords:
            # A tuned-lens pass also stores the logit-lens trace: the comparison run is free.
            extra = self.store is not None and not isinstance(probe, LogitLens)
            probes = [probe, LogitLens()] if extra else [probe]
            bs = self.settings["batch_size"]
            records = extract_records_multi(
                loaded, encoded, bs, self.trainer_kwargs, probes, self.hidden_states
            )
            if extra:
                self.store.put(key(probes[1]), records[1])
            if self.store is not None and self.hidden_states:
                # The same pass without the states is what a policy reading probe features
                # asks for: stored too, so an svm job after a state job runs no LLM.
                for read_by, made in zip(probes, records, strict=True):
                    self.store.put(key(read_by, hidden=False), replace(made, hidden=None))
            return records[0]

        if self.store is None:
            return compute(), key(probe)
        return self.store.get_or_compute(key(probe), compute), key(probe)

    def probe(self, loaded: LoadedModel, train: EncodedPrompts) -> Lens:
        """The configured probe for ``loaded``; a tuned lens is fitted on ``train``."""
        if self.settings["probe"]["name"] == "logit_lens":
            return LogitLens()
        ridge = float(self.settings["probe"]["ridge"])

        def fit() -> TunedLens:
            bs = self.settings["batch_size"]
            return fit_tuned_lens(loaded, train, bs, ridge, self.trainer_kwargs)

        if self.lenses is None:
            return fit()
        return self.lenses.get_or_fit(self._lens_key(loaded, train), fit)

    def _lens_key(self, loaded: LoadedModel, train: EncodedPrompts) -> dict[str, Any]:
        return {
            "model_identity": loaded.identity,
            "data": data_digest(train),
            "ridge": float(self.settings["probe"]["ridge"]),
            "precision": self._precision(loaded),
        }

    def extract(
        self,
        model: LoadedModel,
        prompts: TaskPrompts,
        fit_model: LoadedModel | None = None,
        index: Callable[[bool], str] | None = None,
    ) -> TraceSet:
        """The task's :class:`TraceSet`: each split read through the model's probe (a tuned lens
        is fitted per model on its own train prompts of this task); the training pairs of
        ``fit.model`` through that model's own probe. With ``index`` (the job's
        :func:`~adainfer.compose.resume.traces_hash` for the task, given whether the traces keep
        hidden states), the trace index records where they are, for ``stage=decide``: traces
        with hidden states are indexed without them too (the same pass stores both)."""
        before = self.store.misses if self.store else 0
        name = prompts.task
        probe = self.probe(model, prompts.train)
        other = fit_model if fit_model is not None else model
        fit_probe = probe
        if prompts.lens_train is not None:
            fit_probe = self.probe(other, prompts.lens_train)
        parts, keys = [], {"fit": []}
        for source in prompts.fit:
            reader, read_by = (other, fit_probe) if source.other_model else (model, probe)
            records, key = self._keyed(reader, source.task, source.split, source.prompts, read_by)
            parts.append(records)
            keys["fit"].append(key.fields())
        test, key = self._keyed(model, name, "test", prompts.test, probe)
        keys["test"], keys["calibration"] = key.fields(), None
        calibration = None
        if prompts.calibration is not None:
            calibration, key = self._keyed(model, name, "calibration", prompts.calibration, probe)
            keys["calibration"] = key.fields()
        if index is not None and self.store is not None:
            self._index(index, model, fit_model, prompts, probe, keys)
        return TraceSet(
            task=name,
            fit=LayerRecords.concat(parts) if len(parts) > 1 else parts[0],
            test=test,
            calibration=calibration,
            probe=probe,
            model=model,
            stats=prompts.stats(),
            computed=self.store is None or self.store.misses > before,
        )

    def _index(self, index, model, fit_model, prompts: TaskPrompts, probe, keys) -> None:
        lens = None
        if isinstance(probe, TunedLens) and self.lenses is not None:
            folder = self.lenses.path(self._lens_key(model, prompts.train))
            relative = os.path.relpath(folder, self.store.root)
            lens = {"name": probe.name, "folder": relative, "flops": probe.flops()}
        entry = IndexEntry(
            task=prompts.task,
            fit=keys["fit"],
            test=keys["test"],
            calibration=keys["calibration"],
            model=asdict(StoredModel.of(model)),
            fit_model=asdict(StoredModel.of(fit_model)) if fit_model is not None else None,
            lens=lens,
            counts=prompts.counts(),
            stats=prompts.stats(),
        )
        TraceIndex(self.store).write(index(self.hidden_states), entry)
        if self.hidden_states:  # their pass stored each trace without the hidden states too

            def plain(fields: dict | None) -> dict | None:
                return (
                    None if fields is None else {k: v for k, v in fields.items() if k != "hidden"}
                )

            entry.fit = [plain(f) for f in entry.fit]
            entry.test, entry.calibration = plain(entry.test), plain(entry.calibration)
            TraceIndex(self.store).write(index(False), entry)
