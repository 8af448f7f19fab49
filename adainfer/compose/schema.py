"""Structured configs: which keys each config node may hold (Hydra's ConfigStore "schema" pattern).

Importing this module registers one schema per kind of node under the ConfigStore group
``schema/<group>/<kind>``; each YAML of ``conf/`` names its own first in its defaults list
(``- /schema/task/labelled@_here_``), then its values. A key the schema does not have is refused
while Hydra composes (``classifier.treshold=0.5``); one added with ``+``, which Hydra adds to
any node, is found by :func:`unknown_keys` right after (``adainfer.compose.settings`` reports it
with the other config mistakes, before any data or model loads).

Values are typed ``Any`` on purpose: ``adainfer.compose.settings`` checks them with messages that
name the value, what the key takes and an example. The task schemas also hold the values the tasks
share (split seed, sizes, prompt template), so a task YAML only lists what is its own.
Imports only the standard library, Hydra and OmegaConf.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# Keys added after runs were first hashed (adainfer.compose.resume): each declares here, with
# itself, what keeps the hash of a config that does not use it as it was before the key existed.
UNHASHED_AT = "unhashed_at"  # metadata: a node whose key is at this value is hashed without it
IDLE_UNLESS = "idle_unless"  # metadata: a node where this other key is false is hashed without it


def later(default: Any) -> Any:
    """A key added later whose ``default`` changes nothing: at its default it is left out of the
    config hash, so grids logged before it existed still resume."""
    return field(default=default, metadata={UNHASHED_AT: default})


def only_with(flag: str, default: Any = MISSING) -> Any:
    """A key read only where the node's ``flag`` is true (``task.generate``: where the job's
    task generates), generation's settings: left out of the config hash elsewhere."""
    return field(default=default, metadata={IDLE_UNLESS: flag})


def hash_rules(*schemas: type) -> tuple[dict[str, Any], dict[str, str]]:
    """The keys of ``schemas`` declared with :func:`later` (name -> default) and with
    :func:`only_with` (name -> flag)."""
    unhashed, idle = {}, {}
    for schema in schemas:
        for f in fields(schema):
            if UNHASHED_AT in f.metadata:
                unhashed[f.name] = f.metadata[UNHASHED_AT]
            if IDLE_UNLESS in f.metadata:
                idle[f.name] = f.metadata[IDLE_UNLESS]
    return unhashed, idle


# --- run settings (conf/config.yaml) ---------------------------------------------------------


@dataclass
class TrainerSchema:
    """Passed to ``lightning.Trainer``: device placement and precision."""

    accelerator: Any = MISSING
    devices: Any = MISSING
    precision: Any = MISSING


@dataclass
class MLflowSchema:
    tracking_uri: Any = MISSING  # null: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: Any = MISSING
    stale_after_s: Any = MISSING  # a RUNNING run of another host silent this long is dead


@dataclass
class TracesSchema:
    enabled: Any = MISSING
    dir: Any = MISSING  # null: $ADAINFER_CACHE_DIR/traces


@dataclass
class RiskSchema:
    epsilon: Any = MISSING  # null: the policy's own threshold
    delta: Any = MISSING
    resplits: Any = MISSING
    bound: Any = MISSING  # binomial, hb or wsr: the p-value of each threshold's test
    loss: Any = MISSING  # flip or drop
    answers: Any = only_with("task.generate")  # null (first token), equal or metric
    answer_grid: Any = only_with("task.generate")  # with answers: thresholds tried at most


@dataclass
class FitSchema:
    tasks: dict[str, Any] = field(default_factory=dict)  # +task@fit.tasks.<key>=<task>
    model: Any = MISSING  # +model@fit.model=<model>
    include_own: Any = MISSING


@dataclass
class RunSchema:
    """The job config: one node per group, then the run settings (values in conf/config.yaml)."""

    model: Any = MISSING
    task: Any = MISSING
    classifier: Any = MISSING
    probe: Any = MISSING
    stage: Any = MISSING
    resume: Any = MISSING
    shots: Any = MISSING
    seed: Any = MISSING
    batch_size: Any = MISSING
    context_length: Any = MISSING
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    mlflow: MLflowSchema = field(default_factory=MLflowSchema)
    engine: Any = MISSING
    kv_fill: Any = only_with("task.generate")  # how skipped layers get a generated token's K/V
    feature_set: Any = MISSING
    traces: TracesSchema = field(default_factory=TracesSchema)
    risk: RiskSchema = field(default_factory=RiskSchema)
    fit: FitSchema = field(default_factory=FitSchema)


# --- model/ ----------------------------------------------------------------------------------


@dataclass
class _Model:
    _target_: str = MISSING
    name: Any = MISSING


@dataclass
class GGUFFileModel(_Model):
    """``adainfer.llm.PackagedGGUFModel``: a GGUF file shipped in a Python distribution."""

    distribution: Any = MISSING
    file: Any = MISSING
    install_hint: Any = MISSING
    dtype: Any = MISSING


@dataclass
class GGUFAssembledModel(_Model):
    """``adainfer.llm.PackagedGGUFModel``: a GGUF file assembled from chunk packages."""

    distribution: Any = MISSING
    assemble_module: Any = MISSING
    install_hint: Any = MISSING
    dtype: Any = MISSING


@dataclass
class HubModelSchema(_Model):
    """``adainfer.llm.HubModel``: the Hugging Face hub, or a local copy (``path``)."""

    repo_id: Any = MISSING
    revision: Any = MISSING
    model_type: Any = MISSING
    path: Any = MISSING
    dtype: Any = MISSING
    device_map: Any = MISSING


@dataclass
class TinyModel(_Model):
    """``adainfer.llm.TinyRandomModel``: seeded random weights, a real tokenizer."""

    tokenizer: Any = MISSING  # a model node (its own schema)
    model_type: Any = MISSING
    num_layers: Any = MISSING
    hidden_size: Any = MISSING
    intermediate_size: Any = MISSING
    num_heads: Any = MISSING
    seed: Any = MISSING


# --- task/ -----------------------------------------------------------------------------------


@dataclass
class TemplateSchema:
    """``adainfer.tasks.PromptTemplate``: the paper's prompt format."""

    _target_: str = "adainfer.tasks.PromptTemplate"
    demo: Any = "Q: {x}\nA: {y}\n\n"
    query: Any = "Q: {x}\nA:"


@dataclass
class _Task:
    _target_: str = MISSING
    name: Any = MISSING
    n_calibration: Any = 0  # held-out train instances for risk control (risk.epsilon)
    template: TemplateSchema = field(default_factory=TemplateSchema)


@dataclass
class DataTaskSchema(_Task):
    """A task read from ``<data_dir>/<name>/`` (JSON Lines), or the hub: 200 seeded train and
    test instances by default. ``data_dir: null`` reads ``$ADAINFER_DATA_DIR``."""

    data_dir: Any = None
    split_seed: Any = 42
    calibration_from: Any = "train"  # or test: carve the calibration split out of the test split
    test_from: Any = later("test")  # or train: hold the test split out of train (after calibration)
    n_train: Any = 200  # null = all
    n_test: Any = 200
    n_fit: Any = later(0)  # held-out train instances the exit classifier is also fitted on
    generate: Any = only_with("generate", False)  # true: also generate the test answers (squad, FV)
    max_new_tokens: Any = only_with("generate", 16)  # the longest generated answer, in tokens


@dataclass
class LabelledTaskSchema(DataTaskSchema):
    label_words: Any = MISSING  # the answer of label i


@dataclass
class SST2Schema(LabelledTaskSchema):
    train_rows: Any = later("phrases")  # or sentences: the train split's whole sentences only


@dataclass
class MMLUSchema(DataTaskSchema):
    subjects: Any = MISSING  # null = all 57


@dataclass
class SquadSchema(DataTaskSchema):
    train_fraction: Any = MISSING  # of the local validation split, as the demonstration pool


@dataclass
class TaskListSuiteSchema(DataTaskSchema):
    """A suite of data tasks named in a list (``task=rules``)."""

    tasks: Any = MISSING


@dataclass
class GeneratedTaskSchema(_Task):
    """``adainfer.tasks.RuleTask``: generated in code, every instance by default."""

    rule: Any = MISSING
    sequences: Any = field(
        default_factory=lambda: [
            "lowercase_letters",
            "uppercase_letters",
            "number_words",
            "weekdays",
            "months",
        ]
    )
    train_fraction: Any = 0.5
    split_seed: Any = 0
    n_train: Any = None
    n_test: Any = None


@dataclass
class SuiteSchema:
    """``adainfer.tasks.Suite``: member task nodes by key (each with its own schema)."""

    _target_: str = MISSING
    name: Any = MISSING
    tasks: dict[str, Any] = field(default_factory=dict)


# --- classifier/ -----------------------------------------------------------------------------


@dataclass
class NoSettingsClassifier:
    """A policy without settings of its own (never, oracle_gold, oracle_consistent); every
    policy takes ``first_layer`` and ``schedule``."""

    _target_: str = MISSING
    first_layer: Any = MISSING  # 1 = every layer; auto = where 5% of train instances have settled
    schedule: Any = MISSING  # all, every_<k>, auto (cheapest on the fit records) or [layers]
    read_price: Any = later(None)  # auto's price of a probe, in decoder layers; null: its FLOPs
    features: Any = later(None)  # what it reads of the probe; null: the job's feature_set


@dataclass
class GapSchema(NoSettingsClassifier):
    threshold: Any = MISSING


@dataclass
class SVMSchema(NoSettingsClassifier):
    seed: Any = MISSING
    kernel: Any = MISSING
    C: Any = MISSING
    threshold: Any = MISSING


@dataclass
class LogRegSchema(NoSettingsClassifier):
    seed: Any = MISSING
    threshold: Any = MISSING
    C: Any = MISSING


@dataclass
class StateSchema(NoSettingsClassifier):
    """``adainfer.decide.policies.StatePolicy``: a logistic exit head on the hidden state."""

    seed: Any = MISSING
    threshold: Any = MISSING
    C: Any = MISSING
    class_weight: Any = MISSING  # null or balanced
    head: Any = MISSING  # per_layer or shared


@dataclass
class CRFSchema(NoSettingsClassifier):
    c1: Any = MISSING
    c2: Any = MISSING
    max_iterations: Any = MISSING
    threshold: Any = MISSING


@dataclass
class AutoSchema:
    """``adainfer.decide.policies.AutoPolicy``: candidate policies by name, each a classifier
    node with its own schema; calibration chooses among them (``adainfer.decide.select``)."""

    _target_: str = MISSING
    candidates: dict[str, Any] = field(default_factory=dict)


# --- probe/ ----------------------------------------------------------------------------------


@dataclass
class LogitLensSchema:
    name: Any = MISSING
    first_layer: Any = MISSING  # 1 = every layer; auto = where 5% of train instances have settled


@dataclass
class TunedLensSchema(LogitLensSchema):
    ridge: Any = MISSING


SCHEMAS: dict[str, dict[str, type]] = {
    "schema": {"run": RunSchema},
    "schema/model": {
        "gguf_file": GGUFFileModel,
        "gguf_assembled": GGUFAssembledModel,
        "hub": HubModelSchema,
        "tiny": TinyModel,
    },
    "schema/task": {
        "data": DataTaskSchema,
        "labelled": LabelledTaskSchema,
        "sst2": SST2Schema,
        "mmlu": MMLUSchema,
        "squad": SquadSchema,
        "task_list_suite": TaskListSuiteSchema,
        "generated": GeneratedTaskSchema,
        "suite": SuiteSchema,
    },
    "schema/classifier": {
        "no_settings": NoSettingsClassifier,
        "gap": GapSchema,
        "svm": SVMSchema,
        "logreg": LogRegSchema,
        "state": StateSchema,
        "crf": CRFSchema,
        "auto": AutoSchema,
    },
    "schema/probe": {"logit_lens": LogitLensSchema, "tuned": TunedLensSchema},
}


def register() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent); done on import."""
    store = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            store.store(group=group, name=name, node=node)


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """One line per key of ``cfg`` (recursively) that its node's schema does not have: what a
    ``+key=value`` override may add, since Hydra adds those to any node."""
    problems = []
    kind = OmegaConf.get_type(cfg)
    known = [f.name for f in fields(kind)] if is_dataclass(kind) else None
    for key in cfg:
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else "remove it"
            node = prefix.rstrip(".") or "the job config"
            takes = ", ".join(k for k in known if not k.startswith("_")) or "no settings"
            problems.append(f"unknown key {prefix}{key}: {node} takes {takes} ({hint})")
        child = cfg._get_node(key)
        if isinstance(child, DictConfig):
            problems += unknown_keys(child, f"{prefix}{key}.")
    return problems


register()
