"""The run settings a config may hold, and their checks: cheap, before anything heavy loads.

``check_settings(cfg)`` looks at every size, count, flag and name of a composed job config and
returns one line per mistake, each naming the key, the value it got, what it takes and an
example; a key that its node's schema (``adainfer.compose.schema``) does not have comes first. It
imports nothing beyond the standard library, Hydra's ConfigStore and OmegaConf, so ``run.py``
answers a bad config in about a second, before torch, transformers, Lightning or MLflow are
imported. The names of feature sets and probes live here for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adainfer.choices import (
    ANSWER_RISKS,
    CALIBRATION_SOURCES,
    FEATURE_SETS,
    KV_FILLS,
    PROBES,
    RISK_BOUNDS,
    RISK_LOSSES,
    SST2_TRAIN_ROWS,
    STAGES,
    STATE_HEADS,
    TEST_SOURCES,
    bound_loss_mismatch,
    schedule_ok,
)
from adainfer.compose.schema import unknown_keys
from adainfer.errors import AdaInferError


@dataclass(frozen=True)
class Rule:
    """What one key takes: ``ok(value)`` says whether a value is allowed; ``takes`` says it in
    words ("a whole number >= 0") and ``example`` is a good value."""

    ok: Callable[[Any], bool]
    takes: str  # "a whole number >= 0"
    example: str  # "5"
    optional: bool = False  # null allowed
    unknown: str = ""  # for names: what an unknown one is called ("probe")


def _int(low: int | None = None) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def _number(low: float, high: float | None = None, open_low: bool = False):
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v:  # v != v: NaN
            return False
        above = v > low if open_low else v >= low
        return above and (high is None or v < high)

    return ok


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _one_of(names) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in names


def _first_layer(v: Any) -> bool:
    return v == "auto" or _int(1)(v)


def _devices(v: Any) -> bool:
    """A number of devices >= 1, or a non-empty list of distinct device ids: several run the
    LLM pass data parallel (:mod:`adainfer.llm.gather`). Not ``auto`` or ``-1``: how many devices
    a job gets must be in its config (its hash, its records' batches)."""
    if isinstance(v, list):
        return bool(v) and all(_int(0)(i) for i in v) and len(set(v)) == len(v)
    return _int(1)(v)


COUNT = Rule(_int(1), "a whole number >= 1", "200", optional=True)

# Keys of the job config (conf/config.yaml and the group it comes from).
RUN: dict[str, Rule] = {
    "stage": Rule(_one_of(STAGES), f"one of {list(STAGES)}", "decide", unknown="stage"),
    "resume": Rule(_flag, "true or false", "true"),
    "shots": Rule(_int(0), "a whole number >= 0", "5"),
    "seed": Rule(_int(), "a whole number", "0"),
    "batch_size": Rule(_int(1), "a whole number >= 1", "8"),
    "context_length": Rule(_int(1), "a whole number of tokens >= 1 (or null)", "512", True),
    "engine": Rule(_flag, "true or false", "true"),
    "kv_fill": Rule(_one_of(KV_FILLS), f"one of {list(KV_FILLS)}", "recompute", unknown="kv_fill"),
    "feature_set": Rule(
        _one_of(FEATURE_SETS), f"one of {sorted(FEATURE_SETS)}", "base", unknown="feature_set"
    ),
    "trainer.devices": Rule(
        _devices, "a number of devices >= 1, or a list of distinct device ids such as [0, 1]", "2"
    ),
    "mlflow.experiment": Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a name", "x"),
    "mlflow.stale_after_s": Rule(_number(0, open_low=True), "a number of seconds > 0", "600"),
    "traces.enabled": Rule(_flag, "true or false", "false"),
    "risk.epsilon": Rule(_number(0, 1, open_low=True), "a fraction in (0, 1)", "0.01", True),
    "risk.delta": Rule(_number(0, 1, open_low=True), "a probability in (0, 1)", "0.1"),
    "risk.resplits": Rule(_int(0), "a whole number >= 0", "20"),
    "risk.bound": Rule(_one_of(RISK_BOUNDS), f"one of {list(RISK_BOUNDS)}", "wsr", unknown="bound"),
    "risk.loss": Rule(_one_of(RISK_LOSSES), f"one of {list(RISK_LOSSES)}", "drop", unknown="loss"),
    "risk.answers": Rule(
        _one_of(ANSWER_RISKS), f"one of {list(ANSWER_RISKS)} (or null)", "equal", True, "answers"
    ),
    "risk.answer_grid": Rule(_int(1), "a whole number >= 1", "20"),
    "probe.name": Rule(_one_of(PROBES), f"one of {list(PROBES)}", "tuned", unknown="probe"),
    "probe.first_layer": Rule(_first_layer, "a layer number >= 1, or auto", "auto"),
    "probe.ridge": Rule(_number(0), "a number >= 0", "0.1"),
    "fit.include_own": Rule(_flag, "true or false", "true"),
}

# Keys a task node may hold (conf/task/*.yaml); checked on the task and on every fit.tasks.*.
TASK: dict[str, Rule] = {
    "n_train": COUNT,
    "n_test": COUNT,
    "n_calibration": Rule(_int(0), "a whole number >= 0", "500"),
    "n_fit": Rule(_int(0), "a whole number >= 0", "2000"),
    "split_seed": Rule(_int(), "a whole number", "42"),
    "calibration_from": Rule(
        _one_of(CALIBRATION_SOURCES), f"one of {list(CALIBRATION_SOURCES)}", "test"
    ),
    "test_from": Rule(_one_of(TEST_SOURCES), f"one of {list(TEST_SOURCES)}", "train"),
    "train_fraction": Rule(_number(0, 1, open_low=True), "a number in (0, 1)", "0.5"),
    "train_rows": Rule(_one_of(SST2_TRAIN_ROWS), f"one of {list(SST2_TRAIN_ROWS)}", "sentences"),
    "generate": Rule(_flag, "true or false", "true"),
    "max_new_tokens": Rule(_int(1), "a whole number of tokens >= 1", "16"),
}

# Keys a classifier node may hold (conf/classifier/*.yaml).
CLASSIFIER: dict[str, Rule] = {
    "threshold": Rule(_number(float("-inf")), "a number", "0.5", True),
    "C": Rule(_number(0, open_low=True), "a number > 0", "1.0"),
    "seed": Rule(_int(), "a whole number", "0"),
    "c1": Rule(_number(0), "a number >= 0", "0.1"),
    "c2": Rule(_number(0), "a number >= 0", "0.1"),
    "max_iterations": Rule(_int(1), "a whole number >= 1", "100"),
    "first_layer": Rule(_first_layer, "a layer number >= 1, or auto", "auto"),
    "schedule": Rule(
        schedule_ok, "all, auto, every_<k> (k >= 1) or a list of layer numbers >= 1", "every_2"
    ),
    "read_price": Rule(_number(0, open_low=True), "a number of layers > 0, or null", "0.7", True),
    "class_weight": Rule(_one_of(("balanced",)), "null or balanced", "balanced", True),
    "head": Rule(_one_of(STATE_HEADS), f"one of {list(STATE_HEADS)}", "shared"),
}


def _lookup(node: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(node, Mapping | DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _problems(node: Any, rules: Mapping[str, Rule], prefix: str) -> Iterator[str]:
    for key, rule in rules.items():
        present, value = _lookup(node, key)
        if not present or (value is None and rule.optional):
            continue
        if not rule.ok(value):
            what = f"unknown {rule.unknown} " if rule.unknown else ""
            yield (
                f"{what}{prefix}{key}={_short(value)} is not {rule.takes} "
                f"(e.g. {prefix}{key}={rule.example})"
            )


def _task_list(members: Any) -> bool:
    """A suite's members: task names (``rules``) or task configs by key (``synthetic_rules``)."""
    if isinstance(members, list):
        return bool(members) and all(isinstance(m, str) for m in members)
    return isinstance(members, dict) and bool(members)


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _plain(cfg: DictConfig) -> dict:
    """The config as plain Python, interpolations resolved (a bad one is a config mistake)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # noqa: BLE001 - OmegaConf's resolution errors have many types
        raise AdaInferError(f"the config does not resolve: {err}", "fix that override") from None


def check_settings(cfg: DictConfig) -> list[str]:
    """One line per bad value in ``cfg`` (empty when every checked key is fine)."""
    problems = unknown_keys(cfg)
    plain = _plain(cfg)
    problems += _problems(plain, RUN, "")
    tasks = {"task.": plain.get("task") or {}}
    tasks |= {
        f"fit.tasks.{k}.": node for k, node in ((plain.get("fit") or {}).get("tasks") or {}).items()
    }
    for prefix, node in tasks.items():
        problems += _problems(node, TASK, prefix)
        members = node.get("tasks") if isinstance(node, dict) else None
        if "tasks" in node and not _task_list(members):
            problems.append(
                f"{prefix}tasks={_short(members)} is not a non-empty list of task names "
                f"(e.g. {prefix}tasks=[antonym,capitalize])"
            )
    problems += _problems(plain.get("classifier") or {}, CLASSIFIER, "classifier.")
    risk = plain.get("risk") or {}
    mismatch = bound_loss_mismatch(risk.get("bound"), risk.get("loss"))
    if mismatch:
        problems.append(f"{mismatch[0]} ({mismatch[1]})")
    return problems + _stage_problems(plain) + _answer_problems(plain) + _device_problems(plain)


def _device_problems(plain: dict) -> list[str]:
    """A model spread over the devices by its ``device_map`` is one model on all of them: it
    cannot also be copied to each of ``trainer.devices`` (data parallel)."""
    devices = (plain.get("trainer") or {}).get("devices")
    device_map = (plain.get("model") or {}).get("device_map")
    if not (device_map and _devices(devices)):
        return []  # a bad trainer.devices is reported on its own
    if (len(devices) if isinstance(devices, list) else devices) > 1:
        return [
            f"model.device_map={device_map} with trainer.devices={_short(devices)}: the model is "
            "spread over the devices, not copied to each (e.g. trainer.devices=1, or "
            "model.device_map=null for a model that fits on one device)"
        ]
    return []


def _stage_problems(plain: dict) -> list[str]:
    """Settings that a stage cannot honour."""
    stage, problems = plain.get("stage"), []
    if stage in ("extract", "decide") and not (plain.get("traces") or {}).get("enabled", True):
        problems.append(
            f"stage={stage} with traces.enabled=false: the two stages meet in the trace store "
            "(e.g. traces.enabled=true, or stage=all)"
        )
    if stage == "decide" and plain.get("engine"):
        problems.append(
            "stage=decide with engine=true: the engine runs the model, which stage=decide never "
            "loads (e.g. engine=false, or stage=all)"
        )
    if stage == "extract" and plain.get("engine"):
        problems.append(
            "stage=extract with engine=true: the engine runs a fitted policy, and stage=extract "
            "fits none (e.g. engine=false, or stage=all)"
        )
    if stage in ("extract", "decide") and generates(plain.get("task")):
        problems.append(
            f"stage={stage} with task.generate=true: generation runs the model with a fitted "
            "policy, which needs both (e.g. task.generate=false, or stage=all)"
        )
    return problems


def _answer_problems(plain: dict) -> list[str]:
    """``risk.answers`` bounds generated answers: it needs a task that generates and an ε."""
    risk = plain.get("risk") or {}
    answers = risk.get("answers")
    if answers is None:
        return []
    if not generates(plain.get("task")):
        return [
            f"risk.answers={answers} bounds generated answers, and the task generates none "
            "(e.g. task.generate=true on task=squad or task=function_vectors, or risk.answers=null)"
        ]
    if risk.get("epsilon") is None:
        return [
            f"risk.answers={answers} without risk.epsilon: say how much may be lost "
            "(e.g. risk.epsilon=0.05)"
        ]
    return []


def generates(task: Any) -> bool:
    """Whether a task node, or a member of a suite node, asks for ``generate: true``."""
    if not isinstance(task, dict):
        return False
    members = task.get("tasks")
    nodes = list(members.values()) if isinstance(members, dict) else []
    return task.get("generate") is True or any(generates(node) for node in nodes)


def require_valid(cfg: DictConfig) -> None:
    """Raise one :class:`AdaInferError` listing every bad value in ``cfg``."""
    problems = check_settings(cfg)
    if len(problems) == 1:
        raise AdaInferError(f"bad setting {problems[0]}", "change that override and run again")
    if problems:
        listed = "\n  ".join(problems)
        raise AdaInferError(
            f"{len(problems)} bad settings:\n  {listed}", "change those overrides and run again"
        )
