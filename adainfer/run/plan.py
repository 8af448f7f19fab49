"""A composed job, whichever stage built it: its config, inputs, models, the member tasks'
prompt counts and where their traces come from.

``stage=all`` and ``stage=extract`` build it with the models' tokenizers and every prompt
tokenized (:mod:`adainfer.run.assemble`); ``stage=decide`` from the trace index alone, with no
tokenizer, model or torch (:mod:`adainfer.run.stored`). The rest of the job reads only what is
here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from adainfer.compose.inputs import JobInputs
from adainfer.compose.resume import traces_hash
from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.risk import RiskLimit
from adainfer.decide.stage import ModelFacts, TraceSet
from adainfer.errors import AdaInferError


@dataclass
class Job:
    """A composed job. ``prompts`` and ``extractor`` exist where the LLM may run (stage all and
    extract); ``stored`` holds every trace a ``stage=decide`` job reads, read before its run
    opens."""

    cfg: DictConfig
    inputs: JobInputs
    model: ModelFacts  # adainfer.llm.LoadedModel, or the trace index's StoredModel
    fit_model: ModelFacts | None  # fit.model, when the policy learns from another model
    counts: dict[str, dict[str, int]]  # per task: n_train, n_test, n_calibration, n_fit
    limit: RiskLimit | None
    tags: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, Any] = field(default_factory=dict)  # extract.extractor.TaskPrompts
    extractor: Any = None  # extract.extractor.Extractor
    stored: dict[str, TraceSet] = field(default_factory=dict)

    @property
    def policy(self) -> ExitPolicy:
        return self.inputs.policy

    @property
    def stage(self) -> str:
        return self.cfg.stage

    @property
    def tasks(self) -> list[str]:
        return list(self.inputs.members)


def risk_limit(cfg: DictConfig) -> RiskLimit | None:
    """The job's risk limit (``risk.epsilon``), or None."""
    if cfg.risk.epsilon is None:
        return None
    risk = cfg.risk
    return RiskLimit(risk.epsilon, risk.delta, bound=risk.bound, loss=risk.loss)


def index_key(cfg: DictConfig, inputs: JobInputs, task: str, hidden: bool | None = None) -> str:
    """The trace index's key for ``task`` in this job (:func:`adainfer.compose.resume.traces_hash`
    over the member's splits and the fit tasks'), for traces with hidden states or without
    (default: as the job's policy reads them)."""
    splits = {task: inputs.splits[task]}
    splits |= {f"fit.tasks/{name}": split for name, split in inputs.fit_splits.items()}
    hidden = inputs.policy.reads_hidden if hidden is None else hidden
    return traces_hash(cfg, splits, task, hidden)


def check_fit_split_used(cfg: DictConfig, inputs: JobInputs) -> None:
    """A fit split (``task.n_fit``) feeds the policy only where the task's own train sample
    does: refused, not ignored, where the policy learns from elsewhere."""
    for task, splits in inputs.splits.items():
        if not splits.fit:
            continue
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
