"""Calibration that can certify: every risk.bound × risk.loss on the same records and re-splits.

For each model, task and probe (default: SmolLM2-135M and Gemma-3-270M × SST-2 and AG News,
5-shot, tuned lens then logit lens, 100 train / 2,000 calibration / 500 test instances), one
pipeline job (tracked in MLflow, experiment "calibration"; the default binomial bound) runs the
LLM once and stores the traces, hidden states included when a classifier reads them
(``classifier=state``); the SVM reads the same records and ignores the states. Then, on the
CPU and without the LLM, each classifier is fitted once on the train records and calibrated
with each bound × loss (``--bounds``):

- on the task's own calibration split, scored on its test split: certified or not, the
  certified threshold, the upper confidence bound on the risk, the test accuracy drop and the
  honest FLOPs ratio (probes, translators and classifier charged);
- on ``--resplits`` random calibration/test partitions of the pooled calibration and test
  records (the same partitions for every bound, loss and classifier of a setting): the
  re-split violation rate (share of partitions whose test drop > ε; Learn-then-Test promises
  about δ, the test part's own sampling noise adds to it), the mean and worst test drop, the
  share certified and the mean honest FLOPs ratio.

The pipeline job's own numbers (binomial, flip loss) must equal this script's row for the same
classifier on the task's own split; a mismatch is printed.

The full study (not run here; about 2,600 prompts per model and task through the LLM):

    ADAINFER_DATA_DIR=../shared/data python scripts/calibration_study.py --out docs/calibration

A quick smoke run:

    python scripts/calibration_study.py --models tiny_llama --tasks synthetic_next_item \\
        --n-train 20 --n-test 20 --n-calibration 24 --out /tmp/calibration
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import compose_config, per_task, run_pipeline, study_setting, use_shared_data

from adainfer.compose.inputs import load_inputs
from adainfer.decide import costs
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies.base import ExitPolicy
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit, calibrate
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

BOUNDS = ["binomial:flip", "hb:flip", "wsr:flip", "hb:drop", "wsr:drop"]


def scored(policy: ExitPolicy, test: LayerRecords, traces) -> tuple[float, float, float]:
    """(accuracy drop, honest FLOPs ratio, mean exit layer) of ``policy`` on ``test``."""
    result = apply_exits(test, policy.exit_layers(test))
    honest = costs.trace_flops_ratio(
        result.exit_layer, test.seq_len, traces.model.config, policy, traces.probe
    )
    return result.accuracy_drop(test.gold), float(np.mean(honest)), float(result.exit_layer.mean())


def compare(
    fitted: ExitPolicy, traces, limits: dict[str, RiskLimit], orders: list[np.ndarray]
) -> list[dict]:
    """One row per bound × loss: ``fitted`` calibrated on the task's own split and on each
    re-split (``orders``: permutations of the pooled calibration and test records)."""
    cal, test = traces.calibration, traces.test
    pool = LayerRecords.concat([cal, test])
    n_cal = cal.num_instances
    rows = []
    for label, limit in limits.items():
        policy = copy.deepcopy(fitted)
        chosen = calibrate(policy, traces.fit, cal, limit)
        drop, honest, exit_mean = scored(policy, test, traces)
        splits = []
        for order in orders:
            trial = copy.deepcopy(fitted)
            part, held = pool.take(order[:n_cal]), pool.take(order[n_cal:])
            certified = calibrate(trial, traces.fit, part, limit).certified
            splits.append((certified, *scored(trial, held, traces)))
        certified, drops, flops, _ = (np.array(c, dtype=float) for c in zip(*splits, strict=True))
        rows.append(
            {
                "bound": label,
                "certified": chosen.certified,
                "threshold": chosen.threshold if chosen.certified else None,
                "upper_bound": chosen.upper_bound,
                "cal_drop": chosen.cal_drop,
                "test_drop": drop,
                "honest_flops": honest,
                "exit_layer": exit_mean,
                "violation_rate": float(np.mean(drops > limit.epsilon)),
                "resplit_drop_mean": float(drops.mean()),
                "resplit_drop_max": float(drops.max()),
                "resplit_certified": float(certified.mean()),
                "resplit_honest_flops": float(flops.mean()),
            }
        )
    return rows


def parse_limits(specs: list[str], epsilon: float, delta: float) -> dict[str, RiskLimit]:
    """``bound:loss`` → its RiskLimit (a pairing the config refuses is refused here too)."""
    limits = {}
    for spec in specs:
        bound, _, loss = spec.partition(":")
        limits[f"{bound}·{loss or 'flip'}"] = RiskLimit(
            epsilon, delta, bound=bound, loss=loss or "flip"
        )
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "ag_news"])
    parser.add_argument("--classifiers", nargs="+", default=["state", "svm"])
    parser.add_argument("--probes", nargs="+", default=["tuned", "logit_lens"])
    parser.add_argument("--bounds", nargs="+", default=BOUNDS, help="bound:loss pairs")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--resplits", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-calibration", type=int, default=2000)
    parser.add_argument("--first-layer", default="auto", help="classifier.first_layer")
    parser.add_argument("--seed", type=int, default=0, help="of the re-splits")
    parser.add_argument("--experiment", default="calibration")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    args = parser.parse_args()
    if args.resplits < 20:
        parser.error("--resplits: use at least 20 random calibration/test splits")
    try:
        limits = parse_limits(args.bounds, args.epsilon, args.delta)
    except AdaInferError as err:
        parser.error(f"--bounds: {err}")
    use_shared_data()

    start, rows, checks = time.perf_counter(), [], []
    for model in args.models:
        for task in args.tasks:
            common = [
                *study_setting(model, task, args, args.n_calibration),
                f"risk.epsilon={args.epsilon}",
                f"classifier.first_layer={args.first_layer}",
            ]
            policies = {
                c: load_inputs(compose_config([*common, f"classifier={c}"])).policy
                for c in args.classifiers
            }
            # One LLM pass per probe serves every classifier: kept with hidden states when one
            # reads them. Tuned lens first: its pass also stores the logit-lens traces.
            owner = next((c for c, p in policies.items() if p.reads_hidden), args.classifiers[0])
            for probe in sorted(args.probes, key=lambda p: p != "tuned"):
                setting = [*common, f"probe={probe}", f"classifier={owner}"]
                logged = per_task(run_pipeline(setting), task)
                job = pipeline.compose(compose_config([*setting, "stage=decide"]))
                for name in job.prompts:
                    traces = pipeline.extract(job, name)
                    pool = traces.calibration.num_instances + traces.test.num_instances
                    rng = np.random.default_rng(args.seed)
                    orders = [rng.permutation(pool) for _ in range(args.resplits)]
                    acc_full = float(np.mean(traces.test.argmax[:, -1] == traces.test.gold))
                    found = {}
                    for classifier, policy in policies.items():
                        fitted = copy.deepcopy(policy).fit(traces.fit)
                        found[classifier] = compare(fitted, traces, limits, orders)
                        where = {"model": model, "task": name, "probe": probe}
                        where |= {"classifier": classifier, "acc_full": acc_full}
                        rows += [where | row for row in found[classifier]]
                    mine = next((r for r in found[owner] if r["bound"] == "binomial·flip"), None)
                    theirs = logged[name]
                    if mine is None:
                        continue
                    agree = (
                        bool(theirs["risk_certified"]) == mine["certified"]
                        and abs(theirs["acc_drop"] - mine["test_drop"]) < 1e-9
                        and abs(theirs["honest_flops_ratio"] - mine["honest_flops"]) < 1e-9
                    )
                    checks.append(
                        f"{model} {name} {probe} {owner}: the pipeline job's binomial·flip "
                        f"numbers {'equal' if agree else 'DIFFER FROM'} this script's"
                    )
                    if not agree:
                        print(f"warning: {checks[-1]}: {theirs} vs {mine}", file=sys.stderr)
            print(f"[{time.perf_counter() - start:.0f} s] {model} {task} done", file=sys.stderr)

    frame = pd.DataFrame(rows)
    keys = ["model", "task", "probe", "classifier"]
    frame["cell"] = [
        f"{f:.3f} / {100 * v:.0f}%"
        for f, v in zip(frame.resplit_honest_flops, frame.violation_rate, strict=True)
    ]
    summary = frame.pivot(index=keys, columns="bound", values="cell")[list(limits)].reset_index()
    columns = keys + [
        "bound",
        "certified",
        "threshold",
        "upper_bound",
        "test_drop",
        "honest_flops",
        "exit_layer",
        "violation_rate",
        "resplit_drop_mean",
        "resplit_drop_max",
        "resplit_certified",
        "resplit_honest_flops",
    ]
    head = (
        f"{args.shots}-shot, n_train={args.n_train}, n_test={args.n_test}, "
        f"n_calibration={args.n_calibration}, epsilon={args.epsilon}, delta={args.delta}, "
        f"resplits={args.resplits}, classifier.first_layer={args.first_layer}"
    )
    text = "\n\n".join(
        [
            head,
            f"Per bound·loss: mean honest FLOPs ratio over the {args.resplits} re-splits "
            "(1.000 = the full model) / re-split violation rate (share of re-splits whose test "
            f"drop > epsilon; Learn-then-Test promises about delta = {args.delta}):",
            summary.to_markdown(index=False),
            "Every row (certified, threshold, upper_bound: on the task's own calibration split; "
            "test_drop (full - exit, + is a loss), honest_flops, exit_layer: on its test split; "
            "resplit_*: means over the re-splits):",
            frame[columns].to_markdown(index=False, floatfmt=".4g"),
            "\n".join(f"- {c}" for c in checks),
            f"total {time.perf_counter() - start:.0f} s",
        ]
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.md").write_text(text + "\n")
        frame.drop(columns="cell").to_csv(args.out / "calibration.csv", index=False)


if __name__ == "__main__":
    main()
