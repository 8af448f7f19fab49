"""The one door from a Hydra config to the library: ``run(cfg)`` = compose → extract → decide →
log.

- *compose* (:func:`compose`): the checked settings, policy, tasks and data
  (:func:`adainfer.job.load_inputs`), the model (tokenizer and config; weights only when the LLM
  has to run) and every prompt, tokenized. Everything that can fail on bad input is here,
  before the MLflow run opens, so a mistake costs no half-logged run.
- *extract* (:mod:`adainfer.extract`): each task's layer records, from the trace store when the
  same setting ran before, else one LLM pass per split (stored for the next job).
- *decide* (:mod:`adainfer.decide`): fit, calibrate and score the policy on those records, on
  the CPU.
- *log*: metrics, layer curves, tables and the fitted policy to MLflow.

``engine=true`` also runs the fitted policy online over the test prompts (:mod:`adainfer.timing`);
``task.generate=true`` also generates the test answers with the full model and the fitted
policy and scores them as text (:mod:`adainfer.generate_job`).

``stage=extract`` runs compose and extract only (prefill the trace store on a GPU node; no
MLflow run); ``stage=decide`` reads every trace before its run opens and never loads the
model's weights (a sweep of policies on a laptop); ``stage=all`` (default) runs everything. A
suite (``task=qa`` ...) is one parent run with a nested run per task and the averages, as the
paper's "Avg" columns.
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from adainfer import timing, tracking
from adainfer.decide import Outcome, decide, score
from adainfer.encoding import EncodedPrompts
from adainfer.errors import AdaInferError, fail
from adainfer.evaluate import layer_accuracy, layer_agreement
from adainfer.extract import (
    Extractor,
    FitSource,
    TaskPrompts,
    TraceSet,
    prepare,
    prepare_held_out,
)
from adainfer.generate_job import calibrate_answers, check_lengths, generation_metrics
from adainfer.interrupts import Interrupted, ending_on_signals
from adainfer.job import JobInputs, build, generating, load_inputs
from adainfer.models.loading import LoadedModel
from adainfer.models.placement import input_device
from adainfer.policies.base import ExitPolicy
from adainfer.resume import CONFIG_HASH, config_hash
from adainfer.risk import RiskLimit
from adainfer.runner import extract_records
from adainfer.tasks.base import Splits
from adainfer.tasks.suite import Suite
from adainfer.tradeoff import tradeoff_curve

__all__ = ["AVERAGED", "Job", "Outcome", "compose", "evaluate", "main", "prepare",
           "prepare_held_out", "run", "score"]  # fmt: skip

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


# --- compose ---------------------------------------------------------------------------------


@dataclass
class Job:
    """A composed job: its config, inputs, models, every task's prompts and the trace source."""

    cfg: DictConfig
    inputs: JobInputs
    model: LoadedModel
    fit_model: LoadedModel | None  # fit.model, when the policy learns from another model
    prompts: dict[str, TaskPrompts]
    extractor: Extractor
    limit: RiskLimit | None

    @property
    def policy(self) -> ExitPolicy:
        return self.inputs.policy

    @property
    def stage(self) -> str:
        return self.cfg.stage


def _extractor(cfg: DictConfig, policy: ExitPolicy) -> Extractor:
    settings = {
        "shots": cfg.shots,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "trainer": dict(cfg.trainer),
        "precision": cfg.trainer.precision,
        "probe": {"name": cfg.probe.name, "ridge": cfg.probe.get("ridge")},
        "traces_dir": cfg.traces.dir,
        "traces_enabled": cfg.traces.enabled,
        "hidden_states": policy.reads_hidden,  # traces keep them only for a policy that reads them
    }
    return Extractor(settings, compute=cfg.stage != "decide")


def _task_prompts(cfg: DictConfig, job_inputs: JobInputs, model, fit_model, limit) -> dict:
    """Every member task's prompts for ``model`` (and ``fit_model``), tokenized."""
    splits, fit_splits = job_inputs.splits, job_inputs.fit_splits
    other = fit_model or model
    shots, seed, length = cfg.shots, cfg.seed, cfg.context_length
    encoding = (model, shots, seed, length)

    def train_only(task, split, loaded) -> EncodedPrompts:
        return prepare(task, Splits(split.train, []), loaded, shots, seed, length)[0]

    # Where the exit classifier's training pairs come from (generalization study, Table 6).
    sources = [
        FitSource(t.name, train_only(t, fit_splits[t.name], other), other_model=True)
        for t in job_inputs.fit_tasks.values()
    ]
    # stage=extract stores a calibration trace whenever the task holds calibration instances,
    # so a later stage=decide with risk.epsilon finds it.
    with_calibration = limit is not None or cfg.stage == "extract"
    out = {}
    for name, member in job_inputs.members.items():
        train, test = prepare(member, splits[name], *encoding)
        calibration = None
        if with_calibration and splits[name].calibration:
            calibration = prepare_held_out(member, splits[name], "calibration", *encoding)
        own_other = train_only(member, splits[name], fit_model) if fit_model else None
        own = [FitSource(name, train)]
        if splits[name].fit:  # task.n_fit: more training pairs, the same demonstrations
            _check_fit_split_used(cfg, name)
            fitting = prepare_held_out(member, splits[name], "fit", *encoding)
            own.append(FitSource(name, fitting, split="fit"))
        if sources:
            fit = sources + (own if cfg.fit.include_own else [])
        elif fit_model:
            fit = [FitSource(name, own_other, other_model=True)]
        else:
            fit = own
        out[name] = TaskPrompts(name, train, test, calibration, fit, lens_train=own_other)
    return out


def _check_fit_split_used(cfg: DictConfig, task: str) -> None:
    """A fit split (``task.n_fit``) feeds the policy only where the task's own train sample
    does: refused, not ignored, where the policy learns from elsewhere."""
    if cfg.fit.model:
        raise AdaInferError(
            f"task {task!r}: task.n_fit adds training pairs of the evaluated model, but "
            "fit.model makes the policy learn from another model's records only",
            "drop task.n_fit, or fit.model",
        )
    if cfg.fit.tasks and not cfg.fit.include_own:
        raise AdaInferError(
            f"task {task!r}: task.n_fit adds training pairs of this task, but fit.tasks "
            "without fit.include_own makes the policy learn from the other tasks only",
            "set fit.include_own=true, or drop task.n_fit",
        )


def compose(cfg: DictConfig, inputs: JobInputs | None = None) -> Job:
    """Check and build everything the job needs, before any run opens; load no weights."""
    inputs = inputs or load_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    limit = None
    if cfg.risk.epsilon is not None:
        risk = cfg.risk
        limit = RiskLimit(risk.epsilon, risk.delta, bound=risk.bound, loss=risk.loss)
    model_spec = build(cfg.model, "model")
    fit_spec = build(cfg.fit.model, "fit.model") if cfg.fit.model else None
    if cfg.stage != "extract":  # no run to log into: the store is not needed
        tracking.open_store(
            cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.stale_after_s
        )
    model = model_spec.load()
    fit_model = fit_spec.load() if fit_spec else None
    if cfg.stage == "decide":
        for loaded in (model, fit_model):
            if loaded is not None:
                loaded.forbid_weights("stage=decide reads stored traces and loads no model")
    prompts = _task_prompts(cfg, inputs, model, fit_model, limit)
    for name, member in inputs.members.items():
        if generating(member):
            test_ids = prompts[name].test.input_ids
            check_lengths(name, test_ids, member.max_new_tokens, model.max_length)
    return Job(cfg, inputs, model, fit_model, prompts, _extractor(cfg, inputs.policy), limit)


def extract(job: Job, task: str) -> TraceSet:
    """One task's layer records (stored, or computed and stored): stage one."""
    return job.extractor.extract(job.model, job.prompts[task], job.fit_model)


# --- log -------------------------------------------------------------------------------------


def _params(job: Job) -> dict:
    cfg, model, policy = job.cfg, job.model, job.policy
    fit_tasks = job.inputs.fit_tasks
    return {
        "model": model.name,
        "task": job.inputs.task.name,
        "shots": cfg.shots,
        "classifier": policy.name,
        "feature_set": cfg.feature_set,
        "seed": cfg.seed,
        "num_layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "vocab_size": model.vocab_size,
        "batch_size": cfg.batch_size,
        "engine": bool(cfg.engine),
        "model_identity": model.identity[:250],
        "fit_tasks": ",".join(t.name for t in fit_tasks.values()) or "own",
        "fit_model": (job.fit_model or model).name,
        "fit_include_own": bool(cfg.fit.include_own),
        "probe": cfg.probe.name,
        "probe_ridge": cfg.probe.get("ridge"),
        "probe_first_layer": policy.first_layer_setting,  # classifier.first_layer, or its alias
        "schedule": _layers(policy.schedule),  # classifier.schedule; what auto chose: a tag
        "read_price": policy.read_price,  # what auto priced a probe at, in layers (None: FLOPs)
        "risk_epsilon": cfg.risk.epsilon,
        "risk_delta": cfg.risk.delta if job.limit is not None else None,
        "risk_resplits": cfg.risk.resplits if job.limit is not None else None,
        "risk_bound": cfg.risk.bound if job.limit is not None else None,
        "risk_loss": cfg.risk.loss if job.limit is not None else None,
    }


def _layers(schedule: str | tuple[int, ...]) -> str:
    """A schedule as a param or tag: its name, or its layers joined by commas."""
    return schedule if isinstance(schedule, str) else ",".join(str(x) for x in schedule)


def _sizes(job: Job, name: str) -> dict[str, int | str]:
    prompts, member = job.prompts[name], job.inputs.members[name]
    n_cal = (
        len(prompts.calibration.input_ids) if job.limit and prompts.calibration is not None else 0
    )
    # what the task asked for (None: all); the counts: what it got
    requested = {f"{k}_requested": getattr(member, k, None) for k in ("n_train", "n_test")}
    requested["n_calibration_requested"] = getattr(member, "n_calibration", 0)
    if n_cal:  # where the calibration split came from (a generated task: its train split)
        requested["calibration_from"] = getattr(member, "calibration_from", "train")
    if getattr(member, "test_from", "test") != "test":  # the test split held out of train
        requested["test_from"] = member.test_from
    if hasattr(member, "train_rows"):  # SST-2: its train phrases, or its whole sentences only
        requested["train_rows"] = member.train_rows
    n_fit = sum(len(s.prompts.input_ids) for s in prompts.fit if s.split == "fit")
    return {
        "n_train": len(prompts.train.input_ids),
        "n_test": len(prompts.test.input_ids),
        "n_calibration": n_cal,
        "n_fit": n_fit,
    } | requested


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


# --- run -------------------------------------------------------------------------------------


def _engine_metrics(job: Job, traces: TraceSet, outcome: Outcome) -> dict[str, float]:
    """The fitted policy run online by the engine over the test prompts (``engine=true``)."""
    test = job.prompts[traces.task].test
    return timing.engine_metrics(
        job.model,
        outcome.policy,
        test.input_ids,
        job.cfg.batch_size,
        trace_exits=outcome.result.exit_layer,
        gold=test.gold,
        probe=traces.probe,
        # Placed like an LLM pass: when every record came from the trace store, nothing has
        # put the model on the Trainer's device yet.
        trainer_kwargs=job.extractor.trainer_kwargs,
    )


def _generation(job: Job, traces: TraceSet, outcome: Outcome) -> dict[str, float]:
    """The test answers generated by the full model and the fitted policy
    (``task.generate=true``, :mod:`adainfer.generate_job`); the sample logged as an artifact.
    With ``risk.answers``, the policy's threshold is first certified on whole answers generated
    for the calibration prompts (``gen_risk_*``)."""
    member, cfg = job.inputs.members[traces.task], job.cfg
    squad = member.text_scores == "squad"
    settings = (member.max_new_tokens, cfg.kv_fill, cfg.batch_size, squad)
    policy, certified = outcome.policy, {}
    if job.limit is not None and cfg.risk.answers is not None:
        policy = copy.deepcopy(outcome.policy)
        calibration = job.prompts[traces.task].calibration
        calibrated = calibrate_answers(
            job.model,
            policy,
            traces.probe,
            outcome.train,
            calibration.input_ids if calibration is not None else [],
            job.inputs.splits[traces.task].calibration,
            job.limit,
            cfg.risk.answers,
            cfg.risk.answer_grid,
            settings,
            job.extractor.trainer_kwargs,
        )
        certified = {f"gen_{k}": v for k, v in calibrated.metrics().items()}
    metrics, sample = generation_metrics(
        job.model,
        policy,
        traces.probe,
        job.prompts[traces.task].test.input_ids,
        job.inputs.splits[traces.task].test,
        *settings,
        trainer_kwargs=job.extractor.trainer_kwargs,
    )
    tracking.log_jsonl(sample, "generations.jsonl")
    tracking.set_tags({"gen_kv_fill": cfg.kv_fill})
    return metrics | certified


def generation_verdict(metrics: dict[str, float], limit: RiskLimit | None, answers) -> str:
    """One line on the generated answers: what early exit saved per token, what it changed,
    and what was guaranteed of whole answers."""
    saved = 1.0 - metrics["gen_flops_ratio"]
    line = (
        f"generation: {'saved' if saved >= 0 else 'cost'} {abs(saved):.1%} "
        f"{'of' if saved >= 0 else 'more than'} the full model's FLOPs per generated token "
        f"(honest, after the first), {metrics['gen_equal_full']:.1%} of the answers equal to "
        f"the full model's, exact match {metrics['gen_em_full']:.3f} -> {metrics['gen_em']:.3f}"
    )
    if limit is None or answers is None:
        return line + "; no guarantee on whole answers asked (set risk.answers for one)"
    what = (
        "answers differing from the full model's" if answers == "equal" else "a drop of exact match"
    )
    if not metrics.get("gen_risk_certified"):
        return line + (
            f"; nothing could be certified at {what} <= {100 * limit.epsilon:g}% "
            f"w.p. >= {1 - limit.delta:g} on {int(metrics['gen_risk_n'])} calibration answers, "
            "so it never exits early"
        )
    return line + (
        f"; guaranteed: {what} <= {100 * limit.epsilon:g}% w.p. >= {1 - limit.delta:g} "
        f"({int(metrics['gen_risk_n'])} calibration answers)"
    )


def verdict(metrics: dict[str, float], limit: RiskLimit | None) -> str:
    """One line: what the exits saved (honest FLOPs: probes, translators and the policy's
    decisions counted) at what accuracy drop, and what was guaranteed."""
    saved = 1.0 - metrics["honest_flops_ratio"]
    line = (
        f"{'saved' if saved >= 0 else 'cost'} {abs(saved):.1%} "
        f"{'of' if saved >= 0 else 'more than'} the full model's FLOPs "
        f"(honest FLOPs ratio {metrics['honest_flops_ratio']:.3f}; Eq. 2: "
        f"{metrics['flops_ratio']:.3f}) at an accuracy drop of {100 * metrics['acc_drop']:+.1f} "
        f"points on the test split"
    )
    if limit is None:
        return line + "; no guarantee asked (set risk.epsilon for one)"
    if not metrics.get("risk_certified"):
        return line + (
            f"; nothing could be certified at a drop <= {100 * limit.epsilon:g} points "
            f"(risk.epsilon) w.p. >= {1 - limit.delta:g} on {int(metrics['risk_n'])} calibration "
            "instances, so it never exits early: more calibration instances "
            "(task.n_calibration) or a larger risk.epsilon can"
        )
    return line + (
        f"; guaranteed: a drop <= {100 * limit.epsilon:g} points w.p. >= {1 - limit.delta:g} "
        f"({limit.bound} bound on the {limit.loss} loss, {int(metrics['risk_n'])} calibration "
        "instances)"
    )


def _extract_only(job: Job) -> dict[str, float]:
    """``stage=extract``: store every trace the job's decision stage will read; no MLflow run."""
    for name in job.prompts:
        traces = extract(job, name)
        how = "computed" if traces.computed else "already stored"
        log.info(
            "%s/%s: traces %s in %s (%d fit, %d test, %s calibration instances)",
            job.model.name,
            name,
            how,
            job.extractor.store.root,
            traces.fit.num_instances,
            traces.test.num_instances,
            traces.calibration.num_instances if traces.calibration is not None else "no",
        )
    return {}


def _finished_before(cfg: DictConfig) -> dict[str, float] | None:
    """``resume=true``: the metrics of the experiment's FINISHED run of this very config
    (:mod:`adainfer.resume`), or None when the job has to run. Opening the store first closes
    the runs of jobs that died, e.g. the one killed in the middle of this grid."""
    experiment_id = tracking.open_store(
        cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.stale_after_s
    )
    digest = config_hash(cfg)
    found = tracking.finished_run(experiment_id, CONFIG_HASH, digest)
    if found is None:
        return None
    log.info(
        "resume: run %s (%s) already FINISHED this config (hash %s); skipped, its metrics returned",
        found.info.run_id,
        found.info.run_name,
        digest,
    )
    return dict(found.data.metrics)


def run(cfg: DictConfig, inputs: JobInputs | None = None) -> dict[str, float]:
    """Run one AdaInfer job (a task or a suite) described by ``cfg``; track it in MLflow.

    ``inputs`` are the job's checked settings, tasks and data (:func:`adainfer.job.load_inputs`,
    which ``run.py`` calls before this module is imported); loaded here when not given.
    """
    if cfg.resume and cfg.stage != "extract":
        done = _finished_before(cfg)
        if done is not None:
            return done
    job = compose(cfg, inputs)
    if job.stage == "extract":
        return _extract_only(job)
    # stage=decide reads every trace now, so a missing one is an error before any run opens.
    ready = {name: extract(job, name) for name in job.prompts} if job.stage == "decide" else {}
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def one(name: str) -> dict[str, float]:
        traces = ready.get(name) or extract(job, name)
        outcome = decide(traces, copy.deepcopy(job.policy), job.limit, cfg.risk.resplits)
        if cfg.engine:
            outcome.metrics |= _engine_metrics(job, traces, outcome)
            tracking.set_tags({"engine_device": str(input_device(job.model.model))})
        generates = generating(job.inputs.members[name])
        if generates:
            outcome.metrics |= _generation(job, traces, outcome)
        tracking.set_tags({"llm_forward": "computed" if traces.computed else "trace_store"})
        asked = outcome.policy.scheduled_layers(outcome.test.num_layers)
        tracking.set_tags({"schedule_layers": _layers(asked) or "none"})  # where it was asked
        _log_outcome(outcome, job.model, config_yaml)
        log.info("%s [%s]: %s", run_name, name, outcome.metrics)
        log.info("%s [%s]: %s", run_name, name, verdict(outcome.metrics, job.limit))
        if generates:
            answers = generation_verdict(outcome.metrics, job.limit, cfg.risk.answers)
            log.info("%s [%s]: %s", run_name, name, answers)
        return outcome.metrics

    task = job.inputs.task
    params = _params(job)
    run_name = f"{job.model.name}/{task.name}/{cfg.shots}shot/{job.policy.name}"
    tags = _sweep_tags() | job.extractor.tags | {"adainfer.stage": job.stage}
    own = tags | {CONFIG_HASH: config_hash(cfg)}  # the job's run; a suite's task runs: not
    experiment, uri = cfg.mlflow.experiment, cfg.mlflow.tracking_uri
    if not isinstance(task, Suite):
        with tracking.tracked_run(experiment, run_name, params | _sizes(job, task.name), own, uri):
            return one(task.name)
    suite_params = params | {"suite_tasks": ",".join(job.prompts)}
    with tracking.tracked_run(experiment, run_name, suite_params, own, uri):
        per_task = {}
        for name in job.prompts:
            child = params | _sizes(job, name) | {"task": name, "suite": task.name}
            with tracking.tracked_run(experiment, f"{run_name}/{name}", child, tags, uri, True):
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
