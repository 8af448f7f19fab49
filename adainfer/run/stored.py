"""``stage=decide``: a job composed from the trace index alone, with no tokenizer, no model and
no torch, so policies are fitted and compared anywhere the traces are (a laptop, a CPU node).

Every trace the job reads is read here, before its run opens: a missing one is an error that
names the fix (extract it with ``stage=extract``), and no run is left half-logged."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from adainfer.compose.inputs import JobInputs, load_inputs
from adainfer.decide.records import LayerRecords
from adainfer.decide.stage import TraceSet
from adainfer.extract.store import StoredLens, StoredModel, TraceIndex, TraceStore
from adainfer.files import cache_root
from adainfer.run import tracking
from adainfer.run.plan import Job, check_fit_split_used, index_key, risk_limit


def _seed(seed: int) -> None:
    """What ``lightning.seed_everything`` seeds that deciding uses: Python's and NumPy's."""
    random.seed(seed)
    np.random.seed(seed)


def _traces(cfg: DictConfig, inputs: JobInputs, index: TraceIndex, task: str, limit):
    """The task's TraceSet from its index entry, and the entry."""
    entry = index.read(index_key(cfg, inputs, task))
    model = cfg.model.name
    hidden = inputs.policy.reads_hidden
    what = f"{cfg.probe.name} probe" + (", with hidden states" if hidden else "")
    if entry is None:
        raise index.missing(f"trace of {model} {task}/test ({what})", hidden)
    fit = [
        index.records(key, f"trace of {model} {task}/{key['split']} ({what})", hidden)
        for key in entry.fit
    ]
    test = index.records(entry.test, f"trace of {model} {task}/test ({what})", hidden)
    calibration = None
    if limit is not None and inputs.splits[task].calibration:
        what_cal = f"trace of {model} {task}/calibration ({what})"
        if entry.calibration is None:
            raise index.missing(what_cal, hidden)
        calibration = index.records(entry.calibration, what_cal, hidden)
    lens = None
    if entry.lens is not None:
        folder = index.store.root / entry.lens["folder"]
        if not (folder / "probe.safetensors").is_file():
            raise index.missing(f"tuned lens of {model} in {folder.parent}")
        lens = StoredLens(entry.lens["name"], folder.resolve(), float(entry.lens["flops"]))
    traces = TraceSet(
        task=task,
        fit=LayerRecords.concat(fit) if len(fit) > 1 else fit[0],
        test=test,
        calibration=calibration,
        probe=lens,
        model=StoredModel(**entry.model),
        stats=entry.stats,
        computed=False,
    )
    return traces, entry


def compose(cfg: DictConfig, inputs: JobInputs | None = None) -> Job:
    """The ``stage=decide`` job: its inputs checked, the tracking store open, every trace read."""
    inputs = inputs or load_inputs(cfg)
    _seed(cfg.seed)
    limit = risk_limit(cfg)
    check_fit_split_used(cfg, inputs)
    tracking.open_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.stale_after_s)
    index = TraceIndex(TraceStore(Path(cfg.traces.dir or cache_root() / "traces")))
    read = {task: _traces(cfg, inputs, index, task, limit) for task in inputs.members}
    stored = {task: traces for task, (traces, _) in read.items()}
    counts = {}
    for task, (traces, entry) in read.items():
        n_cal = traces.calibration.num_instances if traces.calibration is not None else 0
        counts[task] = entry.counts | {"n_calibration": n_cal}
    first = next(iter(read.values()))[1]
    model = StoredModel(**first.model)
    fit_model = StoredModel(**first.fit_model) if cfg.fit.model else None
    return Job(cfg, inputs, model, fit_model, counts, limit, stored=stored)
