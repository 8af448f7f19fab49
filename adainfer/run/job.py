"""The one door from a Hydra config to the library: ``run(cfg)`` = compose → extract → decide →
log.

- *compose* (:func:`compose`): the checked settings, policy, tasks and data
  (:func:`adainfer.compose.inputs.load_inputs`), the model (tokenizer and config; weights only when
  the LLM has to run) and every prompt, tokenized. Everything that can fail on bad input is here,
  before the MLflow run opens, so a mistake costs no half-logged run.
- *extract* (:mod:`adainfer.extract.extractor`): each task's layer records, from the trace
  store when the same setting ran before, else one LLM pass per split (stored for the next job).
- *decide* (:mod:`adainfer.decide.stage`): fit, calibrate and score the policy on those
  records, on the CPU.
- *log*: metrics, layer curves, tables and the fitted policy to MLflow.

``engine=true`` also runs the fitted policy online over the test prompts
(:mod:`adainfer.engine.timing`); ``task.generate=true`` also generates the test answers with the
full model and the fitted policy and scores them as text (:mod:`adainfer.run.generation`).

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
from types import ModuleType

import numpy as np
from omegaconf import DictConfig, OmegaConf

from adainfer.compose.inputs import JobInputs, generating
from adainfer.compose.resume import CONFIG_HASH, config_hash
from adainfer.decide.stage import TraceSet, decide
from adainfer.errors import AdaInferError, fail
from adainfer.run import logs, stored, tracking
from adainfer.run.interrupts import Interrupted, ending_on_signals
from adainfer.run.plan import Job
from adainfer.run.verdict import generation_verdict, verdict
from adainfer.tasks.suite import Suite

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


def _llm() -> ModuleType:
    """The part of the job that loads the model and may run it (:mod:`adainfer.run.assemble`):
    imported only where the stage needs it, so ``stage=decide`` never imports torch."""
    import adainfer.run.assemble as assemble

    return assemble


def compose(cfg: DictConfig, inputs: JobInputs | None = None) -> Job:
    """The job, checked and built before any run opens: from the trace index for
    ``stage=decide`` (:mod:`adainfer.run.stored`), else with the models and every prompt
    tokenized (:mod:`adainfer.run.assemble`)."""
    if cfg.stage == "decide":
        return stored.compose(cfg, inputs)
    return _llm().compose(cfg, inputs)


def extract(job: Job, task: str) -> TraceSet:
    """One task's layer records: read before the run opened (``stage=decide``), else from the
    trace store or one LLM pass per split (stage one)."""
    if task in job.stored:
        return job.stored[task]
    return _llm().extract(job, task)


def _finished_before(cfg: DictConfig) -> dict[str, float] | None:
    """``resume=true``: the metrics of the experiment's FINISHED run of this very config
    (:mod:`adainfer.compose.resume`), or None when the job has to run. Opening the store first
    closes the runs of jobs that died, e.g. the one killed in the middle of this grid."""
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

    ``inputs`` are the job's checked settings, tasks and data
    (:func:`adainfer.compose.inputs.load_inputs`, which ``run.py`` calls before this module is
    imported); loaded here when not given.
    """
    if cfg.resume and cfg.stage != "extract":
        done = _finished_before(cfg)
        if done is not None:
            return done
    job = compose(cfg, inputs)  # stage=decide: every trace read now, before any run opens
    if job.stage == "extract":
        return _llm().extract_only(job)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    def one(name: str) -> dict[str, float]:
        traces = extract(job, name)
        outcome = decide(traces, copy.deepcopy(job.policy), job.limit, cfg.risk.resplits)
        if cfg.engine:
            outcome.metrics |= _llm().engine_metrics(job, traces, outcome)
        generates = generating(job.inputs.members[name])
        if generates:
            outcome.metrics |= _llm().generation(job, traces, outcome)
        tracking.set_tags({"llm_forward": "computed" if traces.computed else "trace_store"})
        asked = outcome.policy.scheduled_layers(outcome.test.num_layers)
        tracking.set_tags({"schedule_layers": logs.layers(asked) or "none"})  # where it was asked
        logs.log_outcome(outcome, job.model, config_yaml)
        log.info("%s [%s]: %s", run_name, name, outcome.metrics)
        if outcome.chosen is not None:
            tracking.set_tags({"auto_chosen": outcome.chosen})
        log.info("%s [%s]: %s", run_name, name, verdict(outcome.metrics, job.limit, outcome.chosen))
        if generates:
            answers = generation_verdict(outcome.metrics, job.limit, cfg.risk.answers)
            log.info("%s [%s]: %s", run_name, name, answers)
        return outcome.metrics

    task = job.inputs.task
    params = logs.params(job)
    run_name = f"{job.model.name}/{task.name}/{cfg.shots}shot/{job.policy.name}"
    tags = logs.sweep_tags() | job.tags | {"adainfer.stage": job.stage}
    own = tags | {CONFIG_HASH: config_hash(cfg)}  # the job's run; a suite's task runs: not
    experiment, uri = cfg.mlflow.experiment, cfg.mlflow.tracking_uri
    if not isinstance(task, Suite):
        with tracking.tracked_run(
            experiment, run_name, params | logs.sizes(job, task.name), own, uri
        ):
            return one(task.name)
    suite_params = params | {"suite_tasks": ",".join(job.tasks)}
    with tracking.tracked_run(experiment, run_name, suite_params, own, uri):
        per_task = {}
        for name in job.tasks:
            child = params | logs.sizes(job, name) | {"task": name, "suite": task.name}
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
    SIGINT into runs closed as KILLED and exit status 128 + signum
    (:mod:`adainfer.run.interrupts`)."""
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
