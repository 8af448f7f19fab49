"""The job where the LLM may run (``stage=all`` and ``stage=extract``): its models (weights
loaded only when the LLM has to run), every task's tokenized prompts, their traces extracted and
indexed, and the stages that run the model again with the fitted policy (the engine,
``engine=true``; generation, ``task.generate=true``). Everything that can fail on bad input
happens in :func:`compose`, before the MLflow run opens."""

from __future__ import annotations

import copy
import logging

import lightning as L
from omegaconf import DictConfig

from adainfer.compose.inputs import JobInputs, build, generating, load_inputs
from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.stage import Outcome, TraceSet
from adainfer.engine import timing
from adainfer.extract.extractor import (
    Extractor,
    FitSource,
    TaskPrompts,
    prepare,
    prepare_held_out,
)
from adainfer.llm.encoding import EncodedPrompts
from adainfer.llm.placement import input_device
from adainfer.run import tracking
from adainfer.run.generation import calibrate_answers, check_lengths, generation_metrics
from adainfer.run.plan import Job, check_fit_split_used, index_key, risk_limit
from adainfer.tasks.base import Splits

log = logging.getLogger(__name__)


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
    return Extractor(settings)


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


def compose(cfg: DictConfig, inputs: JobInputs | None = None) -> Job:
    """Check and build everything the job needs, before any run opens; load no weights (they
    load when the LLM has to run)."""
    inputs = inputs or load_inputs(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    limit = risk_limit(cfg)
    check_fit_split_used(cfg, inputs)
    model_spec = build(cfg.model, "model")
    fit_spec = build(cfg.fit.model, "fit.model") if cfg.fit.model else None
    if cfg.stage != "extract":  # no run to log into: the store is not needed
        tracking.open_store(
            cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.stale_after_s
        )
    model = model_spec.load()
    fit_model = fit_spec.load() if fit_spec else None
    prompts = _task_prompts(cfg, inputs, model, fit_model, limit)
    for name, member in inputs.members.items():
        if generating(member):
            test_ids = prompts[name].test.input_ids
            check_lengths(name, test_ids, member.max_new_tokens, model.max_length)
    counts = {name: p.counts() for name, p in prompts.items()}
    extractor = _extractor(cfg, inputs.policy)
    job = Job(cfg, inputs, model, fit_model, counts, limit, dict(extractor.tags))
    job.prompts, job.extractor = prompts, extractor
    return job


def extract(job: Job, task: str) -> TraceSet:
    """One task's layer records (stored, or computed and stored, and indexed): stage one."""

    def index(hidden: bool) -> str:
        return index_key(job.cfg, job.inputs, task, hidden)

    return job.extractor.extract(job.model, job.prompts[task], job.fit_model, index)


def engine_metrics(job: Job, traces: TraceSet, outcome: Outcome) -> dict[str, float]:
    """The fitted policy run online by the engine over the test prompts (``engine=true``)."""
    test = job.prompts[traces.task].test
    tracking.set_tags({"engine_device": str(input_device(job.model.model))})
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


def generation(job: Job, traces: TraceSet, outcome: Outcome) -> dict[str, float]:
    """The test answers generated by the full model and the fitted policy
    (``task.generate=true``, :mod:`adainfer.run.generation`); the sample logged as an artifact.
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


def extract_only(job: Job) -> dict[str, float]:
    """``stage=extract``: store every trace the job's decision stage will read; no MLflow run."""
    for name in job.tasks:
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
