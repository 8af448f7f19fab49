"""Resumable grids: a job whose exact configuration already has a FINISHED run is skipped.

Every run carries the tag ``adainfer.config_hash``, a hash of its resolved job config less the
keys that say where things are kept or how the job is scheduled, not what it computes:

- ``mlflow.*``: which store and experiment the run is logged to (the experiment is searched
  anyway, so a hash is only ever compared within one);
- ``traces.*``: where layer records are cached, or whether they are: a trace is keyed by all
  that made it (:mod:`adainfer.extract.store`), so a stored one gives the records a fresh pass
  gives;
- ``stage``: ``all`` and ``decide`` log the same run from the same records (``extract`` logs
  none), so a grid first run whole may be resumed with ``stage=decide`` and the other way round;
- ``resume`` itself, and ``hydra`` (which a job config does not hold).

Everything else counts, including the model's config (not its weights: a model whose files
changed under the same config is not noticed), the task's data folder, ``trainer.*`` and
``batch_size`` (both may change the numbers). With ``resume=true`` a job looks this hash up in
its experiment before any model loads (:func:`adainfer.run.job.run`); the lookup opens the
store, which first closes the runs of jobs that died (``tracking.close_dead_runs``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from omegaconf import DictConfig, OmegaConf

from adainfer.compose.schema import SCHEMAS, RiskSchema, RunSchema, hash_rules
from adainfer.compose.settings import generates

CONFIG_HASH = "adainfer.config_hash"
# Top-level keys that do not change a job's results (module docstring).
NOT_HASHED = ("mlflow", "traces", "stage", "resume", "hydra")


# Keys added later are declared with their schema field (adainfer.compose.schema.later and
# only_with): what keeps a config that does not use them hashed as before they existed. Task
# nodes: n_fit=0 (the policy fits on the train sample alone), train_rows=phrases (SST-2 reads
# every train row), test_from=test (its own test split); generate and max_new_tokens while it
# does not generate. Classifier nodes: read_price=null (a probe priced at its FLOPs). The job
# and its risk node: kv_fill, risk.answers and risk.answer_grid while no task generates.
LATER_TASK_DEFAULTS, GENERATION_TASK_KEYS = hash_rules(
    *(schema for schema in SCHEMAS["schema/task"].values())
)
LATER_CLASSIFIER_DEFAULTS, _ = hash_rules(*SCHEMAS["schema/classifier"].values())
_, RUN_IDLE = hash_rules(RunSchema)
_, RISK_IDLE = hash_rules(RiskSchema)

# Where a config node's class was before the package took one subpackage per stage: a node's
# ``_target_`` is hashed under its former name, so runs logged before the move still resume.
FORMER_TARGETS = {
    "adainfer.llm.": "adainfer.models.",
    "adainfer.decide.policies.": "adainfer.policies.",
}


def _former_targets(node) -> None:
    """Rewrite every ``_target_`` under ``node`` (a plain config) to its :data:`FORMER_TARGETS`
    name."""
    if isinstance(node, dict):
        target = node.get("_target_")
        for now, before in FORMER_TARGETS.items():
            if isinstance(target, str) and target.startswith(now):
                node["_target_"] = before + target[len(now) :]
        for value in node.values():
            _former_targets(value)
    elif isinstance(node, list):
        for value in node:
            _former_targets(value)


def config_hash(cfg: DictConfig) -> str:
    """Hash of ``cfg`` resolved, less :data:`NOT_HASHED` and the generation settings of a job
    that does not generate: equal for jobs with equal results."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    kept = {key: value for key, value in plain.items() if key not in NOT_HASHED}
    if not generates(kept.get("task")):
        for key in RUN_IDLE:
            kept.pop(key, None)
        for key in RISK_IDLE:
            (kept.get("risk") or {}).pop(key, None)
    _drop_idle_task_keys(kept.get("task"))
    _drop_defaults(kept.get("classifier"), LATER_CLASSIFIER_DEFAULTS)
    _former_targets(kept)
    payload = json.dumps(kept, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


def _drop_defaults(node, defaults: dict) -> None:
    """Remove from ``node`` (a config dict) each key of ``defaults`` that is at its default."""
    if not isinstance(node, dict):
        return
    for key, default in defaults.items():
        if key in node and node[key] == default:
            del node[key]


def _drop_idle_task_keys(task) -> None:
    """Remove :data:`GENERATION_TASK_KEYS` from every task node that does not generate, and
    :data:`LATER_TASK_DEFAULTS` from every task node at their default."""
    if not isinstance(task, dict):
        return
    idle = [key for key, flag in GENERATION_TASK_KEYS.items() if not task.get(flag)]
    for key in idle:
        task.pop(key, None)
    _drop_defaults(task, LATER_TASK_DEFAULTS)
    members = task.get("tasks")
    for member in members.values() if isinstance(members, dict) else ():
        _drop_idle_task_keys(member)


# What a task's traces depend on, of a job config: the model(s), the task (less where its data
# lives: the data itself is hashed), the fit sources, the prompt settings, the lens and the
# weights' precision. Not the classifier (but whether it reads hidden states), the trainer's
# device or the batch size: traces extracted on a GPU node are found from a laptop.
TRACE_KEYS = ("model", "task", "fit", "shots", "seed", "context_length", "probe")


def _drop_data_dirs(node) -> None:
    if isinstance(node, dict):
        node.pop("data_dir", None)
        for value in node.values():
            _drop_data_dirs(value)


def traces_hash(cfg: DictConfig, splits: dict, task: str, hidden: bool) -> str:
    """The trace index's key (:class:`adainfer.extract.store.TraceIndex`) for ``task``'s
    traces under ``cfg``: :data:`TRACE_KEYS` resolved, the weights' precision, whether the
    records keep hidden states, and the examples of every split the job loaded (``splits``:
    the member's and the fit tasks', by name), so a changed data file is a different key.

    Like :func:`config_hash`, it does not see a model whose files changed under the same
    config; the traces it finds were keyed by the model's identity when they were stored."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    kept = {key: plain.get(key) for key in TRACE_KEYS}
    _drop_data_dirs(kept)
    _former_targets(kept)
    kept |= {
        "member": task,
        "hidden": bool(hidden),
        "precision": (plain.get("trainer") or {}).get("precision"),
        "data": {name: asdict(split) for name, split in sorted(splits.items())},
    }
    payload = json.dumps(kept, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:32]
