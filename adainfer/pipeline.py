"""The one door from a Hydra config to the library: ``run(cfg)``.

Only this module sees ``DictConfig`` and calls ``instantiate``. Everything that can fail on bad
input (names, data, model, prompts) is checked before the MLflow run opens, so a mistake costs
no half-logged run.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import lightning as L
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adainfer import tracking
from adainfer.encoding import EncodedPrompts, encode_prompts
from adainfer.errors import AdaInferError
from adainfer.evaluate import ExitResult, apply_exits, layer_accuracy
from adainfer.features import LayerRecords
from adainfer.models.loading import LoadedModel
from adainfer.policies.base import ExitPolicy
from adainfer.runner import extract_records
from adainfer.tasks.base import Splits, Task
from adainfer.tasks.prompts import build_prompts

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Everything one job computed."""

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


def prepare(task: Task, splits: Splits, loaded: LoadedModel, shots: int, seed: int):
    """Prompts for both splits, tokenized, with their gold tokens (checked before any run)."""
    template = getattr(task, "template", None)
    train = build_prompts(splits.train, splits.train, shots, seed, template)
    test = build_prompts(splits.test, splits.train, shots, seed + 1, template)
    tok = loaded.tokenizer
    return encode_prompts(tok, train, loaded.max_length), encode_prompts(
        tok, test, loaded.max_length
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


def run(cfg: DictConfig) -> dict[str, float]:
    """Run one AdaInfer job described by ``cfg`` and track it in MLflow."""
    if cfg.shots < 0:
        raise AdaInferError(f"shots={cfg.shots} is negative", "use shots=0, 5, 10, 15 or 20")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_spec = _build(cfg.model, "model")
    task = _build(cfg.task, "task")
    policy = _build(cfg.classifier, "classifier")
    splits = task.load()  # data problems surface before the model is loaded
    loaded = model_spec.load()
    train, test = prepare(task, splits, loaded, cfg.shots, cfg.seed)
    params = {
        "model": model_spec.name,
        "task": task.name,
        "shots": cfg.shots,
        "classifier": policy.name,
        "seed": cfg.seed,
        "n_train": len(train.input_ids),
        "n_test": len(test.input_ids),
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "vocab_size": loaded.vocab_size,
        "batch_size": cfg.batch_size,
        "model_identity": loaded.identity[:250],
    }
    trainer_kwargs = {k: v for k, v in cfg.trainer.items() if v is not None}
    run_name = f"{model_spec.name}/{task.name}/{cfg.shots}shot/{policy.name}"
    with tracking.tracked_run(
        cfg.mlflow.experiment, run_name, params, _sweep_tags(), cfg.mlflow.tracking_uri
    ):
        outcome = evaluate(loaded, policy, train, test, cfg.batch_size, trainer_kwargs)
        tracking.log_layer_curve("acc_layer", layer_accuracy(outcome.test))
        tracking.log_tables(_tables(outcome), OmegaConf.to_yaml(cfg, resolve=True))
        tracking.log_metrics(outcome.metrics)
    log.info("%s: %s", run_name, outcome.metrics)
    return outcome.metrics


def main(cfg: DictConfig) -> dict[str, float]:
    """``run`` with user errors turned into one clear message and exit status 2."""
    try:
        return run(cfg)
    except AdaInferError as err:
        print(f"adainfer: error: {err}", file=sys.stderr)
        sys.exit(2)
