"""Learned probes and risk-controlled exits, against the logit lens and the oracles.

For each model and task (default: the rules suite, SST-2 and AG News, 5-shot), runs the
pipeline (tracked in MLflow, experiment "risk") for the SVM through the logit lens and through
a tuned lens, each with its own threshold and risk-controlled at ``--epsilon`` (Learn-then-Test,
δ = ``--delta``, on ``--n-calibration`` held-out train instances; these read layers from
``--first-layer``, by default the first where 5% of train instances have settled), plus both
oracles (every layer). Prints
(and writes to ``--out``) the accuracy drop against the full model and the honest FLOPs ratio
(probes, translators and classifier included), then, for the risk-controlled runs, how often
the test drop exceeded ε over ``--resplits`` random calibration/test partitions. The LLM runs
once per (model, task, split, probe); everything else reads the traces.

    ADAINFER_DATA_DIR=../shared/data python scripts/risk_study.py --out docs/risk
    python scripts/risk_study.py --models tiny_llama --tasks synthetic_next_item --n-train 20 \\
        --n-test 20 --n-calibration 20   # a quick smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from common import per_task, run_pipeline, use_shared_data

# (label, overrides): what each column of the table is.
METHODS = [
    ("svm", ["classifier=svm", "probe=logit_lens"]),
    ("svm+risk", ["classifier=svm", "probe=logit_lens", "risk.epsilon={eps}", "{first}"]),
    ("tuned svm", ["classifier=svm", "probe=tuned"]),
    ("tuned svm+risk", ["classifier=svm", "probe=tuned", "risk.epsilon={eps}", "{first}"]),
    ("oracle_gold", ["classifier=oracle_gold", "probe=logit_lens"]),
    ("tuned oracle_gold", ["classifier=oracle_gold", "probe=tuned"]),
    ("oracle_consistent", ["classifier=oracle_consistent", "probe=logit_lens"]),
    ("tuned oracle_consistent", ["classifier=oracle_consistent", "probe=tuned"]),
]
KEEP = (
    "acc_full",
    "acc",
    "acc_drop",
    "honest_flops_ratio",
    "flops_ratio",
    "exit_layer_mean",
    "agree_mean",
    "agree_half_layer",
)
RISK = (
    "risk_certified",
    "risk_threshold",
    "risk_resplit_exceed_rate",
    "risk_resplit_drop_mean",
    "risk_resplit_drop_max",
    "risk_resplit_certified_rate",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--tasks", nargs="+", default=["rules", "sst2", "ag_news"])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--resplits", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-calibration", type=int, default=400)
    parser.add_argument(
        "--first-layer",
        default="auto",
        help="probe.first_layer of the risk-controlled SVMs (auto, or 1 = every layer)",
    )
    parser.add_argument("--experiment", default="risk")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    args = parser.parse_args()
    if args.resplits < 10:
        parser.error("--resplits: use at least 10 random calibration/test splits")
    use_shared_data()

    start, rows = time.perf_counter(), []
    for model in args.models:
        for task in args.tasks:
            common = [
                f"model={model}",
                f"task={task}",
                f"shots={args.shots}",
                f"task.n_train={args.n_train}",
                f"task.n_test={args.n_test}",
                f"task.n_calibration={args.n_calibration}",
                f"risk.delta={args.delta}",
                f"risk.resplits={args.resplits}",
                f"mlflow.experiment={args.experiment}",
            ]
            # Tuned-lens runs first: their LLM pass also stores the logit-lens traces.
            for label, extra in sorted(METHODS, key=lambda m: "probe=tuned" not in m[1]):
                first = f"probe.first_layer={args.first_layer}"
                extra = [o.format(eps=args.epsilon, first=first) for o in extra]
                metrics = run_pipeline(common + extra)
                for name, m in per_task(metrics, task).items():
                    row = {"model": model, "task": name, "method": label}
                    rows.append(row | {k: m.get(k) for k in KEEP + RISK})
            print(f"[{time.perf_counter() - start:.0f} s] {model} {task} done", file=sys.stderr)

    frame = pd.DataFrame(rows)
    frame["cell"] = [
        f"{100 * d:+.1f} / {f:.3f}"
        for d, f in zip(frame.acc_drop, frame.honest_flops_ratio, strict=True)
    ]
    labels = [label for label, _ in METHODS]
    main_table = frame.pivot(index=["model", "task"], columns="method", values="cell")
    main_table = main_table[labels].reset_index()
    full = frame.groupby(["model", "task"]).acc_full.first().rename("full acc").reset_index()
    main_table = full.merge(main_table, on=["model", "task"])
    means = frame.groupby(["model", "method"])[["acc_drop", "honest_flops_ratio"]].mean()
    avg = means.reset_index()
    avg["cell"] = [
        f"{100 * d:+.1f} / {f:.3f}"
        for d, f in zip(avg.acc_drop, avg.honest_flops_ratio, strict=True)
    ]
    avg = avg.pivot(index="model", columns="method", values="cell")[labels].reset_index()
    avg.insert(1, "task", "**Avg**")
    avg.insert(2, "full acc", frame.groupby("model").acc_full.mean().reindex(avg.model).to_numpy())
    main_table = pd.concat([main_table, avg], ignore_index=True).sort_values(
        ["model", "task"], key=lambda c: c.str.replace("**Avg**", "~", regex=False), kind="stable"
    )
    controlled = frame[frame.method.str.endswith("+risk")]
    checks = controlled[
        [
            "model",
            "task",
            "method",
            "risk_certified",
            "risk_resplit_exceed_rate",
            "risk_resplit_drop_mean",
            "risk_resplit_drop_max",
            "risk_resplit_certified_rate",
            "exit_layer_mean",
        ]
    ]
    lenses = frame[frame.method.isin(["svm", "tuned svm"])].pivot(
        index=["model", "task"], columns="method", values=["agree_mean", "agree_half_layer"]
    )
    lenses.columns = [f"{probe} {what}" for what, probe in lenses.columns]
    lenses = lenses.reset_index()
    head = (
        f"{args.shots}-shot, n_train={args.n_train}, n_test={args.n_test}, "
        f"n_calibration={args.n_calibration}, epsilon={args.epsilon}, delta={args.delta}, "
        f"resplits={args.resplits}"
    )
    text = "\n\n".join(
        [
            head,
            "Per method: accuracy drop in points (full model - exit; + is a loss) / honest FLOPs "
            "ratio (probes, translators, classifier included; 1.000 = the full model):",
            main_table.to_markdown(index=False, floatfmt=".3f"),
            f"Risk control over {args.resplits} random calibration/test splits "
            f"(exceed_rate: share of splits whose test drop > epsilon; guarantee: about delta):",
            checks.to_markdown(index=False, floatfmt=".3f"),
            "How well each probe reads the final answer off the layers, on the test split "
            "(agree_mean: share of (instance, layer < L) pairs whose argmax is the last layer's; "
            "agree_half_layer: first layer where half the instances agree); svm = logit lens:",
            lenses.to_markdown(index=False, floatfmt=".3f"),
            f"total {time.perf_counter() - start:.0f} s",
        ]
    )
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "risk.md").write_text(text + "\n")
        frame.to_csv(args.out / "risk_runs.csv", index=False)


if __name__ == "__main__":
    main()
