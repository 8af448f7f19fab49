"""The one door from a Hydra config to the library: ``run(cfg)``.

Only this module sees ``DictConfig`` and calls ``instantiate``. Everything that can fail on bad
input (names, data, model, prompts) is checked before the MLflow run opens, so a mistake costs
no half-logged run. A suite (``task=qa`` ...) is one parent run with a nested run per task and
the averages, as the paper's "Avg" columns. Layer records come from the trace store when the
same setting ran before, so a sweep over classifiers runs the LLM once.
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from adainfer import costs, timing, tracking
from adainfer.encoding import EncodedPrompts, check_label_tokens, encode_prompts
from adainfer.errors import AdaInferError, fail
from adainfer.evaluate import (
    ExitResult,
    agreement_metrics,
    apply_exits,
    layer_accuracy,
    layer_agreement,
)
from adainfer.features import LayerRecords
from adainfer.interrupts import Interrupted, ending_on_signals
from adainfer.job import JobInputs, build, load_inputs
from adainfer.models import cache
from adainfer.models.loading import LoadedModel
from adainfer.policies.base import ExitPolicy
from adainfer.probes import LensStore, LogitLens, Probe, TunedLens, fit_tuned_lens
from adainfer.risk import RiskLimit, calibrate, resplit_check
from adainfer.runner import extract_records, extract_records_multi
from adainfer.tasks.base import Splits, Task
from adainfer.tasks.prompts import build_prompts
from adainfer.tasks.suite import Suite
from adainfer.traces import TraceKey, TraceStore, data_digest
from adainfer.tradeoff import tradeoff_curve

log = logging.getLogger(__name__)

AVERAGED = (
    "acc_full",
    "acc",
    "acc_drop",
    "exit_layer_mean",
    "exit_layer_var",
    "flops_ratio",
    "honest_flops_ratio",
)


@dataclass
class Outcome:
    """Everything one task's evaluation computed."""

    metrics: dict[str, float]
    train: LayerRecords  # the records the policy was fitted on
    test: LayerRecords
    result: ExitResult
    policy: ExitPolicy
    probe: Probe = field(default_factory=LogitLens)  # what read the layers


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
    return encode_prompts(loaded.tokenizer, prompts, length)


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


def prepare_calibration(
    task: Task,
    splits: Splits,
    loaded: LoadedModel,
    shots: int,
    seed: int,
    max_length: int | None = None,
) -> EncodedPrompts:
    """Prompts of the calibration split (demonstrations from train, as for test)."""
    return _encode(task, splits.calibration, splits.train, loaded, shots, seed + 2, max_length)


def score(
    policy: ExitPolicy,
    fit_records: LayerRecords,
    test_records: LayerRecords,
    loaded: LoadedModel,
    probe: Probe | None = None,
    calibration: LayerRecords | None = None,
    limit: RiskLimit | None = None,
    resplits: int = 0,
    first_layer: int | str | None = None,
) -> Outcome:
    """Fit the policy on ``fit_records``, calibrate its threshold on ``calibration`` to the
    ``limit`` when one is given (:mod:`adainfer.risk`), and score it on ``test_records``.
    With ``resplits``, also check the guarantee on that many random redraws of the
    calibration/test partition (:func:`adainfer.risk.resplit_check`). ``first_layer``, when
    given, replaces the policy's own setting (a layer, or ``"auto"``, which the policy resolves
    when it is fitted: :func:`~adainfer.policies.base.earliest_settled` on the fit records).

    Besides Eq. 2 (``flops_ratio``), ``honest_flops_ratio`` charges every probe, translator and
    classifier call the exits imply (:func:`adainfer.costs.trace_flops_ratio`).
    """
    probe = probe or LogitLens()
    if first_layer is not None:
        policy.first_layer = first_layer
    policy.fit(fit_records)
    calibrated = {}
    if limit is not None and calibration is not None:
        if policy.deployable:
            if resplits:  # before calibrating: each split calibrates its own copy
                calibrated = resplit_check(
                    policy, fit_records, calibration, test_records, limit, resplits
                )
            calibrated |= calibrate(policy, fit_records, calibration, limit).metrics()
        else:
            log.warning("%s looks at the answer: risk control leaves it as it is", policy.name)
    result = apply_exits(test_records, policy.exit_layers(test_records))
    metrics = result.metrics(test_records, loaded.hidden_size, loaded.vocab_size)
    metrics["acc_drop"] = metrics["acc_full"] - metrics["acc"]
    honest = costs.trace_flops_ratio(
        result.exit_layer, test_records.seq_len, loaded.config, policy, probe
    )
    metrics["honest_flops_ratio"] = float(np.mean(honest))
    metrics["first_layer"] = float(policy.first_layer)  # what first_layer=auto chose
    metrics |= agreement_metrics(test_records)
    return Outcome(metrics | calibrated, fit_records, test_records, result, policy, probe)


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


def _tables(outcome: Outcome) -> dict[str, pd.DataFrame]:
    train = outcome.train.to_frame().assign(split="fit")
    test = outcome.test.to_frame().assign(split="test")
    res = outcome.result
    exits = pd.DataFrame(
        {
            "instance": range(outcome.test.num_instances),
            "exit_layer": res.exit_layer,
            "prediction": res.prediction,
            "full_prediction": res.full_prediction,
            "gold_token": outcome.test.gold,
            "seq_len": outcome.test.seq_len,
        }
    )
    return {"layer_features": pd.concat([train, test], ignore_index=True), "test_exits": exits}


def _sweep_tags() -> dict[str, str]:
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {"hydra_overrides": " ".join(hc.overrides.task)}
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        tags |= {"sweep_dir": str(hc.sweep.dir), "sweep_job": str(hc.job.num)}
    return tags


class _Records:
    """Layer records of (model, task, split, probe): from the trace store, else one LLM pass;
    tuned lenses likewise from their cache, else fitted on the train prompts."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.trainer_kwargs = {k: v for k, v in cfg.trainer.items() if v is not None}
        root = cfg.traces.dir or cache.cache_root() / "traces"
        self.store = TraceStore(Path(root)) if cfg.traces.enabled else None
        self.lenses = LensStore(Path(root).parent / "probes") if self.store else None
        # Checked before any LLM pass: an unwritable cache is read, not written (README,
        # "Layer traces"), instead of failing after the pass and losing its records.
        self.tags: dict[str, str] = {}
        lenses = self.lenses if cfg.probe.name == "tuned" else None
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
        return f"{loaded.dtype}|{self.cfg.trainer.precision}"

    def __call__(
        self,
        loaded: LoadedModel,
        task: str,
        split: str,
        encoded: EncodedPrompts,
        probe: Probe | None = None,
    ) -> LayerRecords:
        probe = probe or LogitLens()

        def key(probe: Probe) -> TraceKey:
            return TraceKey(
                model=loaded.name,
                model_identity=loaded.identity,
                task=task,
                split=split,
                shots=self.cfg.shots,
                seed=self.cfg.seed,
                instances=len(encoded.input_ids),
                data=data_digest(encoded),
                precision=self._precision(loaded),
                probe=probe.fingerprint,
            )

        def compute() -> LayerRecords:
            # A tuned-lens pass also stores the logit-lens trace: the comparison run is free.
            extra = self.store is not None and not isinstance(probe, LogitLens)
            probes = [probe, LogitLens()] if extra else [probe]
            bs = self.cfg.batch_size
            records = extract_records_multi(loaded, encoded, bs, self.trainer_kwargs, probes)
            if extra:
                self.store.put(key(probes[1]), records[1])
            return records[0]

        if self.store is None:
            return compute()
        return self.store.get_or_compute(key(probe), compute)

    def probe(self, loaded: LoadedModel, train: EncodedPrompts) -> Probe:
        """The configured probe for ``loaded``; a tuned lens is fitted on ``train``."""
        if self.cfg.probe.name == "logit_lens":
            return LogitLens()
        ridge = float(self.cfg.probe.ridge)

        def fit() -> TunedLens:
            bs = self.cfg.batch_size
            return fit_tuned_lens(loaded, train, bs, ridge, self.trainer_kwargs)

        if self.lenses is None:
            return fit()
        key = {
            "model_identity": loaded.identity,
            "data": data_digest(train),
            "ridge": ridge,
            "precision": self._precision(loaded),
        }
        return self.lenses.get_or_fit(key, fit)


def _log_outcome(outcome: Outcome, loaded: LoadedModel, config_yaml: str) -> None:
    tracking.log_metrics(outcome.metrics)
    tracking.log_layer_curve("acc_layer", layer_accuracy(outcome.test))
    tracking.log_layer_curve("agree_layer", layer_agreement(outcome.test))
    curve = tradeoff_curve(outcome.policy, outcome.test, loaded.hidden_size, loaded.vocab_size)
    refs = curve[curve.threshold.isna()].set_index("policy")
    tracking.log_metrics(
        {
            f"{ref}_{key}": float(refs.loc[ref, key])
            for ref in ("oracle_consistent", "oracle_gold")
            for key in ("acc", "flops_ratio")
        }
    )
    tracking.log_tables(_tables(outcome) | {"tradeoff": curve}, config_yaml)
    with tempfile.TemporaryDirectory() as tmp:
        outcome.policy.save(Path(tmp) / "policy")
        outcome.probe.save(Path(tmp) / "policy")  # a tuned lens travels with its policy
        tracking.log_folder(Path(tmp) / "policy", "policy")


def run(cfg: DictConfig, inputs: JobInputs | None = None) -> dict[str, float]:
    """Run one AdaInfer job (a task or a suite) described by ``cfg``; track it in MLflow.

    ``inputs`` are the job's checked settings, tasks and data (:func:`adainfer.job.load_inputs`,
    which ``run.py`` calls before this module is imported); loaded here when not given.
    """
    inputs = inputs or load_inputs(cfg)
    policy, task, members, splits = inputs.policy, inputs.task, inputs.members, inputs.splits
    fit_tasks, fit_splits = inputs.fit_tasks, inputs.fit_splits
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_spec = build(cfg.model, "model")
    limit = RiskLimit(cfg.risk.epsilon, cfg.risk.delta) if cfg.risk.epsilon is not None else None
    fit_spec = build(cfg.fit.model, "fit.model") if cfg.fit.model else None

    tracking.open_store(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.stale_after_s)
    loaded = model_spec.load()
    fit_loaded = fit_spec.load() if fit_spec else loaded

    def encode(member: Task, split: Splits, model: LoadedModel):
        return prepare(member, split, model, cfg.shots, cfg.seed, cfg.context_length)

    prepared = {name: encode(member, splits[name], loaded) for name, member in members.items()}
    calibration = {}
    if limit is not None:
        calibration = {
            name: prepare_calibration(
                member, splits[name], loaded, cfg.shots, cfg.seed, cfg.context_length
            )
            for name, member in members.items()
        }

    # Where the exit classifier's training pairs come from (generalization study, Table 6).
    def encode_train(member: Task, split: Splits, model: LoadedModel) -> EncodedPrompts:
        return encode(member, Splits(split.train, []), model)[0]  # test prompts not needed

    fit_sources = [
        (t.name, encode_train(t, fit_splits[t.name], fit_loaded)) for t in fit_tasks.values()
    ]
    fit_own = {}  # inter-model: each task's own train split, prompted for the other model
    if fit_spec:
        fit_own = {name: encode_train(m, splits[name], fit_loaded) for name, m in members.items()}

    params = {
        "model": model_spec.name,
        "task": task.name,
        "shots": cfg.shots,
        "classifier": policy.name,
        "feature_set": cfg.feature_set,
        "seed": cfg.seed,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "vocab_size": loaded.vocab_size,
        "batch_size": cfg.batch_size,
        "engine": bool(cfg.engine),
        "model_identity": loaded.identity[:250],
        "fit_tasks": ",".join(t.name for t in fit_tasks.values()) or "own",
        "fit_model": fit_loaded.name,
        "fit_include_own": bool(cfg.fit.include_own),
        "probe": cfg.probe.name,
        "probe_ridge": cfg.probe.get("ridge"),
        "probe_first_layer": policy.first_layer_setting,  # classifier.first_layer, or its alias
        "risk_epsilon": cfg.risk.epsilon,
        "risk_delta": cfg.risk.delta if limit is not None else None,
        "risk_resplits": cfg.risk.resplits if limit is not None else None,
    }
    records = _Records(cfg)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    run_name = f"{model_spec.name}/{task.name}/{cfg.shots}shot/{policy.name}"
    tags = _sweep_tags() | records.tags
    uri = cfg.mlflow.tracking_uri

    def fit_records(name: str, probe: Probe, fit_probe: Probe) -> LayerRecords:
        """Where the training pairs come from; each model is read through its own probe."""
        if fit_tasks:
            parts = [records(fit_loaded, t, "train", enc, fit_probe) for t, enc in fit_sources]
            if cfg.fit.include_own:
                parts.append(records(loaded, name, "train", prepared[name][0], probe))
            return LayerRecords.concat(parts) if len(parts) > 1 else parts[0]
        if fit_spec:
            return records(fit_loaded, name, "train", fit_own[name], fit_probe)
        return records(loaded, name, "train", prepared[name][0], probe)

    def one(name: str) -> dict[str, float]:
        train, test = prepared[name]
        misses = records.store.misses if records.store else 0
        # A tuned lens is fitted per model on its own train prompts of this task.
        probe = records.probe(loaded, train)
        fit_probe = records.probe(fit_loaded, fit_own[name]) if fit_spec else probe
        outcome = score(
            copy.deepcopy(policy),  # each task fits its own classifier
            fit_records(name, probe, fit_probe),
            records(loaded, name, "test", test, probe),
            loaded,
            probe,
            records(loaded, name, "calibration", calibration[name], probe) if limit else None,
            limit,
            cfg.risk.resplits,
        )
        if cfg.engine:
            outcome.metrics |= timing.engine_metrics(
                loaded,
                outcome.policy,
                test.input_ids,
                cfg.batch_size,
                trace_exits=outcome.result.exit_layer,
                gold=test.gold,
                probe=probe,
            )
        outcome.metrics["prompts_truncated"] = float(train.truncated + test.truncated)
        outcome.metrics["demos_dropped"] = float(train.dropped_demos + test.dropped_demos)
        outcome.metrics["answers_space_prefixed"] = float(
            train.space_prefixed + test.space_prefixed
        )
        ran = records.store is None or records.store.misses > misses
        tracking.set_tags({"llm_forward": "computed" if ran else "trace_store"})
        _log_outcome(outcome, loaded, config_yaml)
        log.info("%s [%s]: %s", run_name, name, outcome.metrics)
        return outcome.metrics

    def sizes(name: str) -> dict[str, int]:
        train, test = prepared[name]
        n_cal = len(calibration[name].input_ids) if limit else 0
        member = members[name]  # what the task asked for (None: all); the counts above: got
        requested = {f"{k}_requested": getattr(member, k, None) for k in ("n_train", "n_test")}
        requested["n_calibration_requested"] = getattr(member, "n_calibration", 0)
        return {
            "n_train": len(train.input_ids),
            "n_test": len(test.input_ids),
            "n_calibration": n_cal,
        } | requested

    if not isinstance(task, Suite):
        with tracking.tracked_run(
            cfg.mlflow.experiment, run_name, params | sizes(task.name), tags, uri
        ):
            return one(task.name)
    with tracking.tracked_run(
        cfg.mlflow.experiment, run_name, params | {"suite_tasks": ",".join(members)}, tags, uri
    ):
        per_task = {}
        for name in members:
            child_params = params | sizes(name) | {"task": name, "suite": task.name}
            with tracking.tracked_run(
                cfg.mlflow.experiment, f"{run_name}/{name}", child_params, tags, uri, nested=True
            ):
                per_task[name] = one(name)
        summary = {f"{name}/{k}": v for name, m in per_task.items() for k, v in m.items()}
        summary |= {key: float(np.mean([m[key] for m in per_task.values()])) for key in AVERAGED}
        tracking.log_metrics(summary)
        tracking.log_tables({}, config_yaml)
    log.info("%s average: %s", run_name, {k: summary[k] for k in AVERAGED})
    return summary


def main(cfg: DictConfig, inputs: JobInputs | None = None) -> dict[str, float]:
    """``run`` with user errors turned into one clear message and exit status 2, and SIGTERM /
    SIGINT into runs closed as KILLED and exit status 128 + signum (:mod:`adainfer.interrupts`)."""
    try:
        with ending_on_signals():
            return run(cfg, inputs)
    except AdaInferError as err:
        fail(err)
    except Interrupted as err:
        print(
            f"adainfer: stopped by {err.reason} (an open MLflow run is closed as KILLED)",
            file=sys.stderr,
        )
        sys.exit(err.exit_status)
