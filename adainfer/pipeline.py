"""The one door from a Hydra config to the library: ``run(cfg)``.

Only this module sees ``DictConfig`` and calls ``instantiate``. Everything that can fail on bad
input (names, data, model, prompts) is checked before the MLflow run opens, so a mistake costs
no half-logged run. A suite (``task=qa`` ...) is one parent run with a nested run per task and
the averages, as the paper's "Avg" columns.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adainfer import tracking
from adainfer.encoding import EncodedPrompts, check_label_tokens, encode_prompts
from adainfer.errors import AdaInferError
from adainfer.evaluate import ExitResult, apply_exits, layer_accuracy
from adainfer.features import LayerRecords
from adainfer.models.loading import LoadedModel
from adainfer.policies.base import ExitPolicy
from adainfer.runner import extract_records
from adainfer.tasks.base import Splits, Task
from adainfer.tasks.prompts import build_prompts
from adainfer.tasks.suite import Suite

log = logging.getLogger(__name__)

AVERAGED = ("acc_full", "acc", "exit_layer_mean", "exit_layer_var", "flops_ratio")


@dataclass
class Outcome:
    """Everything one task's evaluation computed."""

    metrics: dict[str, float]
    train: LayerRecords
    test: LayerRecords
    result: ExitResult


def _build(node: DictConfig, what: str) -> Any:
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise AdaInferError(
            f"bad {what} config: {cause}",
            f"check the {what}.* keys against conf/{what}/ (see README, 'How configs compose')",
        ) from None


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
    template = getattr(task, "template", None)
    train = build_prompts(splits.train, splits.train, shots, seed, template)
    test = build_prompts(splits.test, splits.train, shots, seed + 1, template)
    length = min(max_length or loaded.max_length, loaded.max_length)
    return (
        encode_prompts(loaded.tokenizer, train, length),
        encode_prompts(loaded.tokenizer, test, length),
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
    policy.fit(train_records)
    result = apply_exits(test_records, policy.exit_layers(test_records))
    metrics = result.metrics(test_records, loaded.hidden_size, loaded.vocab_size)
    metrics["prompts_truncated"] = float(train.truncated + test.truncated)
    metrics["demos_dropped"] = float(train.dropped_demos + test.dropped_demos)
    return Outcome(metrics, train_records, test_records, result)


def _tables(outcome: Outcome) -> dict[str, pd.DataFrame]:
    train = outcome.train.to_frame().assign(split="train")
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


def _log_outcome(outcome: Outcome, config_yaml: str) -> None:
    tracking.log_metrics(outcome.metrics)
    tracking.log_layer_curve("acc_layer", layer_accuracy(outcome.test))
    tracking.log_tables(_tables(outcome), config_yaml)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one AdaInfer job (a task or a suite) described by ``cfg``; track it in MLflow."""
    if cfg.shots < 0:
        raise AdaInferError(f"shots={cfg.shots} is negative", "use shots=0, 5, 10, 15 or 20")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_spec = _build(cfg.model, "model")
    task = _build(cfg.task, "task")
    policy = _build(cfg.classifier, "classifier")
    members = task.tasks if isinstance(task, Suite) else {task.name: task}
    splits = {name: member.load() for name, member in members.items()}  # data errors first
    loaded = model_spec.load()
    prepared = {
        name: prepare(member, splits[name], loaded, cfg.shots, cfg.seed, cfg.context_length)
        for name, member in members.items()
    }
    params = {
        "model": model_spec.name,
        "task": task.name,
        "shots": cfg.shots,
        "classifier": policy.name,
        "seed": cfg.seed,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "vocab_size": loaded.vocab_size,
        "batch_size": cfg.batch_size,
        "model_identity": loaded.identity[:250],
    }
    trainer_kwargs = {k: v for k, v in cfg.trainer.items() if v is not None}
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    run_name = f"{model_spec.name}/{task.name}/{cfg.shots}shot/{policy.name}"
    tags = _sweep_tags()
    uri = cfg.mlflow.tracking_uri

    def one(name: str) -> dict[str, float]:
        train, test = prepared[name]
        member_policy = copy.deepcopy(policy)  # each task fits its own classifier
        outcome = evaluate(loaded, member_policy, train, test, cfg.batch_size, trainer_kwargs)
        _log_outcome(outcome, config_yaml)
        log.info("%s [%s]: %s", run_name, name, outcome.metrics)
        return outcome.metrics

    def sizes(name: str) -> dict[str, int]:
        train, test = prepared[name]
        return {"n_train": len(train.input_ids), "n_test": len(test.input_ids)}

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


def main(cfg: DictConfig) -> dict[str, float]:
    """``run`` with user errors turned into one clear message and exit status 2."""
    try:
        return run(cfg)
    except AdaInferError as err:
        print(f"adainfer: error: {err}", file=sys.stderr)
        sys.exit(2)
