"""What a job's MLflow run holds: its params and split sizes, the per-layer curves, the tables
(layer features, test exits, the trade-off) and the fitted policy with its lens."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from hydra.core.hydra_config import HydraConfig

from adainfer.decide.metrics import layer_accuracy, layer_agreement
from adainfer.decide.stage import ModelFacts, Outcome
from adainfer.decide.tradeoff import tradeoff_curve
from adainfer.run import tracking
from adainfer.run.plan import Job


def params(job: Job) -> dict:
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
        "schedule": layers(policy.schedule),  # classifier.schedule; what auto chose: a tag
        "read_price": policy.read_price,  # what auto priced a probe at, in layers (None: FLOPs)
        "risk_epsilon": cfg.risk.epsilon,
        "risk_delta": cfg.risk.delta if job.limit is not None else None,
        "risk_resplits": cfg.risk.resplits if job.limit is not None else None,
        "risk_bound": cfg.risk.bound if job.limit is not None else None,
        "risk_loss": cfg.risk.loss if job.limit is not None else None,
    }


def layers(schedule: str | tuple[int, ...]) -> str:
    """A schedule as a param or tag: its name, or its layers joined by commas."""
    return schedule if isinstance(schedule, str) else ",".join(str(x) for x in schedule)


def sizes(job: Job, name: str) -> dict[str, int | str]:
    counts, member = job.counts[name], job.inputs.members[name]
    n_cal = counts["n_calibration"] if job.limit else 0
    # what the task asked for (None: all); the counts: what it got
    requested = {f"{k}_requested": getattr(member, k, None) for k in ("n_train", "n_test")}
    requested["n_calibration_requested"] = getattr(member, "n_calibration", 0)
    if n_cal:  # where the calibration split came from (a generated task: its train split)
        requested["calibration_from"] = getattr(member, "calibration_from", "train")
    if getattr(member, "test_from", "test") != "test":  # the test split held out of train
        requested["test_from"] = member.test_from
    if hasattr(member, "train_rows"):  # SST-2: its train phrases, or its whole sentences only
        requested["train_rows"] = member.train_rows
    return counts | {"n_calibration": n_cal} | requested


def tables(outcome: Outcome) -> dict[str, pd.DataFrame]:
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


def sweep_tags() -> dict[str, str]:
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    tags = {"hydra_overrides": " ".join(hc.overrides.task)}
    if hc.mode is not None and hc.mode.name == "MULTIRUN":
        tags |= {"sweep_dir": str(hc.sweep.dir), "sweep_job": str(hc.job.num)}
    return tags


def log_outcome(outcome: Outcome, loaded: ModelFacts, config_yaml: str) -> None:
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
    tracking.log_tables(tables(outcome) | {"tradeoff": curve}, config_yaml)
    with tempfile.TemporaryDirectory() as tmp:
        outcome.policy.save(Path(tmp) / "policy")
        if outcome.probe is not None:  # a tuned lens travels with its policy
            outcome.probe.save(Path(tmp) / "policy")
        tracking.log_folder(Path(tmp) / "policy", "policy")
