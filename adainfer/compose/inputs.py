"""What a job reads before any model loads: its checked settings, its tasks and their data.

Everything here is cheap (OmegaConf, Hydra's ``instantiate``, JSON Lines, scikit-learn), so
a mistake in the config or the data is reported in seconds; the pipeline then loads the model
and runs the job on these inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from adainfer.compose.settings import FEATURE_SETS, require_valid
from adainfer.decide.policies import ExitPolicy
from adainfer.decide.policies.base import check_online
from adainfer.decide.risk import check_calibratable
from adainfer.errors import AdaInferError
from adainfer.tasks.base import Splits, Task
from adainfer.tasks.suite import Suite


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``instantiate`` a config node; a bad node is one :class:`AdaInferError`."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise AdaInferError(
            f"bad {what} config: {cause}",
            f"check the {what}.* keys against conf/{what}/ (see docs/CONFIGURATION.md, "
            "'How the configs compose')",
        ) from None


@dataclass
class JobInputs:
    """The job's exit policy (not fitted yet), its task (or suite), the member tasks and their
    loaded splits, and the tasks the policy is fitted on instead (``fit.tasks``, the
    generalization study)."""

    policy: ExitPolicy
    task: Task
    members: dict[str, Task]
    splits: dict[str, Splits]
    fit_tasks: dict[str, Task]
    fit_splits: dict[str, Splits]


def use_probe_first_layer(policy: ExitPolicy, first_layer: int | str) -> None:
    """Deprecated alias: ``probe.first_layer`` (set to anything but its default, 1) is passed to
    the policy, whose own setting is ``classifier.first_layer``. Both set and different: a
    mistake, refused."""
    if first_layer == 1:
        return
    if policy.first_layer_setting not in (1, first_layer):
        raise AdaInferError(
            f"probe.first_layer={first_layer} and classifier.first_layer="
            f"{policy.first_layer_setting} disagree",
            "set classifier.first_layer only (probe.first_layer is its deprecated alias)",
        )
    policy.first_layer = first_layer


def generating(task: Any) -> bool:
    """Whether ``task`` asks for its test answers to be generated (``task.generate``)."""
    return bool(getattr(task, "generate", False))


def check_generation(policy: ExitPolicy, members: dict[str, Task]) -> None:
    """``task.generate=true``: refuse, before any model loads, a policy that cannot decide
    online (the engine generates) or a task whose answers are a closed label set."""
    asking = [task for task in members.values() if generating(task)]
    if asking:
        try:
            check_online(policy)
        except AdaInferError as err:
            raise AdaInferError(
                f"task.generate=true generates with the early-exit engine, and {err.problem}",
                f"{err.fix}; or set task.generate=false",
            ) from None
    for task in asking:
        labels = getattr(task, "labels", None)
        if labels:
            raise AdaInferError(
                f"task.generate=true on task {task.name!r}, whose answers are the labels "
                f"{list(labels)[:5]}: its first answer token already decides them",
                "generate the answers of free-text tasks (task=squad, task=function_vectors), "
                "or set task.generate=false",
            )


def load_inputs(cfg: DictConfig) -> JobInputs:
    """Check ``cfg``'s settings, build its policy and tasks and load their data; raise on any
    mistake."""
    require_valid(cfg)
    own = cfg.classifier.get("features") is not None  # classifier.features over feature_set
    given = {} if own else {"features": FEATURE_SETS[cfg.feature_set]}
    policy = build(cfg.classifier, "classifier", **given)
    use_probe_first_layer(policy, cfg.probe.get("first_layer", 1))
    if cfg.engine:
        check_online(policy)
    if policy.reads_hidden and cfg.fit.model:
        raise AdaInferError(
            f"classifier {policy.name!r} reads the hidden states of the model it decides for, "
            "so it cannot learn from another model's (fit.model)",
            "drop +model@fit.model, or use a classifier on probe features (svm, logreg)",
        )
    if cfg.risk.epsilon is not None:
        check_calibratable(policy)
    task = build(cfg.task, "task")
    fit_tasks = {k: build(node, "fit.tasks") for k, node in (cfg.fit.tasks or {}).items()}
    members = task.tasks if isinstance(task, Suite) else {task.name: task}
    check_generation(policy, members)
    splits = {name: member.load() for name, member in members.items()}
    if cfg.risk.epsilon is not None:
        for name, split in splits.items():
            if not split.calibration:
                raise AdaInferError(
                    f"risk.epsilon={cfg.risk.epsilon} needs a calibration split, and task "
                    f"{name!r} has none",
                    "hold out train instances for it: task.n_calibration=500 (with task.n_train)",
                )
    fit_splits = {t.name: t.load() for t in fit_tasks.values()}
    for name, split in splits.items():
        # A train prompt's demonstrations come from the other train instances.
        if cfg.shots >= len(split.train):
            raise AdaInferError(
                f"shots={cfg.shots} but task {name!r} has only {len(split.train)} train "
                f"instances, so a train prompt has at most {len(split.train) - 1} demonstrations",
                f"lower shots (at most {len(split.train) - 1}), or raise task.n_train",
            )
    return JobInputs(policy, task, members, splits, fit_tasks, fit_splits)
