"""Learned probes and risk-controlled exits, against the logit lens and the oracles.

For each model and task (default: the rules suite, SST-2 and AG News, 5-shot), runs the
pipeline (tracked in MLflow, experiment "risk") for each method of ``--methods`` (default: all
of them):

- ``svm``, ``tuned svm``: AdaInfer's SVM through the logit lens and through a tuned lens, with
  their own threshold;
- ``svm+risk``, ``tuned svm+risk``: the same, risk-controlled at ``--epsilon``
  (Learn-then-Test, δ = ``--delta``, ``--bound`` and ``--loss`` as ``risk.bound`` and
  ``risk.loss``, on ``--n-calibration`` held-out instances, per task with
  ``--n-calibration-for``), reading layers from ``--first-layer`` (``classifier.first_layer``;
  by default the first where 5% of train instances have settled);
- ``svm+risk auto``, ``tuned svm+risk auto``: the same under ``classifier.schedule=auto``
  (asked only at the layers the dynamic program picks on the train records, docs/METHOD.md);
- ``state+risk``, ``tuned state+risk``: ``classifier=state`` (an exit head on the hidden
  state, docs/studies/2026-11-30-state-head.md), risk-controlled alike; the probe reads the
  answer at the exit layer;
- the oracles (every layer), through either probe.

``--methods original`` runs the first eight-column study only (svm, svm+risk, the tuned pair
and the four oracles): with ``--n-test 150 --n-calibration 300`` its tables are those of
docs/risk/ (this script's output before the state and schedule methods), followed by the
"best deployable" table below.

Prints (and writes to ``--out``) the accuracy drop against the full model and the honest FLOPs
ratio (probes, translators and classifier included), then, for the risk-controlled runs, how
often the test drop exceeded ε over ``--resplits`` random calibration/test partitions, how well
each probe reads the final answer, and per row the best deployable certified policy: the
lowest honest FLOPs among the risk-controlled runs that certified a threshold (the full model,
1.000, where none did), its re-split violation rate, the tuned ``oracle_consistent`` honest
FLOPs and the distance to it, with a per-model average and issue #14's targets met or missed.
That pick is made on the test split, so it summarises the study; it is no selection procedure.

One LLM pass per (model, task, split): the ``classifier=state`` jobs run first, tuned lens
first (a hidden-state pass also stores the plain traces, and a tuned-lens pass the logit-lens
ones); every later job reads the traces. ``--task-overrides TASK:KEY=VALUE`` adds overrides to
one task's jobs (after the common ones, so they win), e.g. ``sst2:task.calibration_from=test``.

The full study of issue #14 (SmolLM2 and Gemma-3, rules + SST-2 + AG News, 5-shot, ε = 1
point, δ = 0.1, 20 re-splits, 500 test instances where the task has them; AG News calibrates on
2,000 train instances; SST-2 on 400 carved out of its test pool, whose sentences are not
exchangeable with the train phrases, leaving 472 of its 872 for test):

    ADAINFER_DATA_DIR=../shared/data python scripts/risk_study.py --n-test 500 \\
        --n-calibration 300 --n-calibration-for ag_news=2000 sst2=400 \\
        --task-overrides sst2:task.calibration_from=test sst2:task.n_test=472 \\
        --epsilon 0.01 --delta 0.1 --resplits 20 --experiment risk-exits --out docs/risk/exits

docs/risk/exits/ holds it as it was run, in three invocations (SmolLM2; Gemma-3's rules and
SST-2; Gemma-3's AG News), with docs/studies/2026-11-30-exits-that-pay-issue-14.md reading it.
docs/risk/exits_fit/ holds the follow-up on SmolLM2's SST-2 and AG News with a fit split
(``--task-overrides sst2:task.n_fit=2000 ag_news:task.n_fit=1000``) for the state methods only:
an overridden task's SVM methods would fit scikit-learn's RBF SVC on all those instances too,
which takes minutes per job and grows its per-decision cost with its support vectors.

The study as docs/risk/ holds it (the first eight methods):

    ADAINFER_DATA_DIR=../shared/data python scripts/risk_study.py --methods original \\
        --n-test 150 --n-calibration 300 --out docs/risk

A quick smoke run:

    python scripts/risk_study.py --models tiny_llama --tasks synthetic_next_item --n-train 20 \\
        --n-test 20 --n-calibration 24 --resplits 10 --experiment smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import per_task, run_pipeline, study_setting, use_shared_data

from adainfer.decide.risk import RiskLimit
from adainfer.errors import AdaInferError

LIMIT = ["risk.epsilon={eps}", "risk.bound={bound}", "risk.loss={loss}"]
RISK = [*LIMIT, "{first}"]
# label -> overrides: what each column of the table is, in the table's order.
METHODS = {
    "svm": ["classifier=svm", "probe=logit_lens"],
    "svm+risk": ["classifier=svm", "probe=logit_lens", *RISK],
    "svm+risk auto": ["classifier=svm", "probe=logit_lens", "classifier.schedule=auto", *RISK],
    "state+risk": ["classifier=state", "probe=logit_lens", *RISK],
    "tuned svm": ["classifier=svm", "probe=tuned"],
    "tuned svm+risk": ["classifier=svm", "probe=tuned", *RISK],
    "tuned svm+risk auto": ["classifier=svm", "probe=tuned", "classifier.schedule=auto", *RISK],
    "tuned state+risk": ["classifier=state", "probe=tuned", *RISK],
    # classifier=auto: one certified choice among its candidates, on calibration data only
    "auto+risk": ["classifier=auto", "probe=logit_lens", *LIMIT],
    "tuned auto+risk": ["classifier=auto", "probe=tuned", *LIMIT],
    "oracle_gold": ["classifier=oracle_gold", "probe=logit_lens"],
    "tuned oracle_gold": ["classifier=oracle_gold", "probe=tuned"],
    "oracle_consistent": ["classifier=oracle_consistent", "probe=logit_lens"],
    "tuned oracle_consistent": ["classifier=oracle_consistent", "probe=tuned"],
}
ORIGINAL = [
    "svm",
    "svm+risk",
    "tuned svm",
    "tuned svm+risk",
    "oracle_gold",
    "tuned oracle_gold",
    "oracle_consistent",
    "tuned oracle_consistent",
]
# Issue #29's study: classifier=auto through either probe, beside the tuned oracle.
SELECTED = ["auto+risk", "tuned auto+risk", "tuned oracle_consistent"]
PRESETS = {"all": list(METHODS), "original": ORIGINAL, "auto": SELECTED}
AUTO = "tuned auto+risk"  # the method #29's targets are for
ORACLE = "tuned oracle_consistent"  # the reference of the best deployable policy
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
RISK_METRICS = (
    "risk_certified",
    "risk_threshold",
    "risk_resplit_exceed_rate",
    "risk_resplit_drop_mean",
    "risk_resplit_drop_sd",
    "risk_resplit_drop_max",
    "risk_resplit_pool_exceed_rate",
    "risk_resplit_pool_drop_mean",
    "risk_resplit_certified_rate",
)
# Issue #14's targets for the best deployable certified policy's honest FLOPs.
ROW_TARGETS = {("smollm2_135m", "sst2"): 0.80, ("smollm2_135m", "ag_news"): 0.80}
AVERAGE_TARGETS = {"smollm2_135m": ("<=", 0.92), "gemma3_270m": ("<", 1.00)}
# Issue #29's targets for classifier=auto (chosen on calibration, never on test).
AUTO_ROW_TARGETS = {
    ("smollm2_135m", "sst2"): 0.68,
    ("smollm2_135m", "ag_news"): 0.65,
    ("gemma3_270m", "sst2"): 0.80,
}
AUTO_AVERAGE_TARGETS = {"smollm2_135m": ("<=", 0.90), "gemma3_270m": ("<=", 0.95)}


def controlled(method: str) -> bool:
    """Whether the method is risk-controlled (a ``+risk`` column)."""
    return "+risk" in method


def run_order(labels: list[str]) -> list[str]:
    """The methods in the order their jobs run: hidden-state jobs first (their LLM pass stores
    the plain traces too), tuned lens first (its pass stores the logit-lens traces too)."""
    return sorted(
        labels,
        key=lambda m: (
            not {"classifier=state", "classifier=auto"} & set(METHODS[m]),
            "probe=tuned" not in METHODS[m],
        ),
    )


def chosen_methods(names: list[str]) -> list[str]:
    """``--methods``: labels and preset names, expanded, in the table's order."""
    picked = set()
    for name in names:
        if name in PRESETS:
            picked.update(PRESETS[name])
        elif name in METHODS:
            picked.add(name)
        else:
            raise AdaInferError(
                f"--methods: unknown method {name!r}",
                f"use some of {list(METHODS)} (quote the ones with spaces), or a preset: "
                f"{list(PRESETS)}",
            )
    return [m for m in METHODS if m in picked]


def per_task_values(specs: list[str], tasks: list[str], what: str) -> dict[str, list[str]]:
    """``TASK<sep>VALUE`` specs (``=`` for sizes, ``:`` for overrides) by task."""
    sep = "=" if what == "--n-calibration-for" else ":"
    out: dict[str, list[str]] = {}
    for spec in specs:
        task, found, value = spec.partition(sep)
        if not found or not value:
            raise AdaInferError(
                f"{what}: {spec!r} is not TASK{sep}VALUE",
                f"e.g. {what} ag_news=2000"
                if sep == "="
                else f"e.g. {what} sst2:task.calibration_from=test",
            )
        if task not in tasks:
            raise AdaInferError(
                f"{what}: {task!r} is not one of --tasks {tasks}", "add it to --tasks, or drop it"
            )
        out.setdefault(task, []).append(value)
    return out


def cells(drop: pd.Series, flops: pd.Series) -> list[str]:
    """'drop in points / honest FLOPs' per row."""
    return [f"{100 * d:+.1f} / {f:.3f}" for d, f in zip(drop, flops, strict=True)]


def best_deployable(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task): the risk-controlled run that certified a threshold with the lowest
    honest FLOPs on the test split (the full model where none did), its drop and re-split
    violation rate, the tuned ``oracle_consistent`` honest FLOPs and the distance to it; then a
    per-model average row (the largest violation rate in its violation column)."""
    rows = []
    for (model, task), runs in frame.groupby(["model", "task"], sort=True):
        ok = runs[runs.method.map(controlled) & (runs.risk_certified == 1)]
        oracle = runs.loc[runs.method == ORACLE, "honest_flops_ratio"]
        row = {"model": model, "task": task}
        if len(ok):
            best = ok.loc[ok.honest_flops_ratio.idxmin()]
            row |= {
                "best": best.method,
                "acc_drop": best.acc_drop,
                "honest_flops": best.honest_flops_ratio,
                "violation_rate": best.risk_resplit_exceed_rate,
            }
        else:  # nothing certified: the full model is what deploys
            row |= {
                "best": "full model",
                "acc_drop": 0.0,
                "honest_flops": 1.0,
                "violation_rate": 0.0,
            }
        row["oracle"] = float(oracle.iloc[0]) if len(oracle) else np.nan
        rows.append(row)
    return with_averages(pd.DataFrame(rows))


# Violation rates a table of with_averages may have; its average row gives each one's largest.
VIOLATION_COLUMNS = ("violation_rate", "pool_violation_rate")


def with_averages(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (a row per model and task) with its distance to the oracle and a per-model
    average row (the largest violation rate in its violation column)."""
    table = table.copy()
    table["distance"] = table.honest_flops - table.oracle
    averages = []
    for model, part in table.groupby("model", sort=True):
        averages.append(
            {
                "model": model,
                "task": f"**Avg** ({len(part)})",
                "best": "",
                "acc_drop": part.acc_drop.mean(),
                "honest_flops": part.honest_flops.mean(),
                **{c: part[c].max() for c in VIOLATION_COLUMNS if c in part},  # the worst
                "oracle": part.oracle.mean(),
                "distance": part.distance.mean(),
            }
        )
    return pd.concat([table, pd.DataFrame(averages)], ignore_index=True).sort_values(
        ["model", "task"], key=lambda c: c.str.replace("**Avg**", "~", regex=False), kind="stable"
    )


def chosen_name(metrics: dict) -> str | None:
    """The candidate a classifier=auto run chose, from its metrics (None: not an auto run)."""
    if "auto_full_model" not in metrics:
        return None
    if metrics["auto_full_model"]:
        return "full model"
    cost = metrics["auto_cal_cost"]
    names = [k[5:-9] for k in metrics if k.startswith("auto_") and k.endswith("_cal_cost")]
    return next(n for n in names if n != "" and metrics[f"auto_{n}_cal_cost"] == cost)


def selected(frame: pd.DataFrame, method: str = AUTO) -> pd.DataFrame:
    """Per (model, task): what ``method`` (classifier=auto) chose on calibration and what it
    gave on test, beside the tuned oracle; then per-model averages. No choice here looks at
    the test split: each row is one run of one procedure."""
    rows = []
    for (model, task), runs in frame.groupby(["model", "task"], sort=True):
        run = runs[runs.method == method]
        if not len(run):
            continue
        run = run.iloc[0]
        oracle = runs.loc[runs.method == ORACLE, "honest_flops_ratio"]
        rows.append(
            {
                "model": model,
                "task": task,
                "best": run.chosen,
                "acc_drop": run.acc_drop,
                "honest_flops": run.honest_flops_ratio,
                "violation_rate": run.risk_resplit_exceed_rate,
                "pool_violation_rate": run.risk_resplit_pool_exceed_rate,
                "oracle": float(oracle.iloc[0]) if len(oracle) else np.nan,
            }
        )
    return with_averages(pd.DataFrame(rows)) if rows else pd.DataFrame()


def target_lines(
    best: pd.DataFrame,
    delta: float,
    row_targets: dict = ROW_TARGETS,
    average_targets: dict = AVERAGE_TARGETS,
) -> list[str]:
    """Targets (issue #14's by default) against a table of :func:`with_averages`: met,
    MISSED, or not run."""
    rows = best[~best.task.str.startswith("**Avg**")].set_index(["model", "task"])
    averages = best[best.task.str.startswith("**Avg**")].set_index("model")
    lines = []
    for (model, task), limit in row_targets.items():
        if (model, task) not in rows.index:
            lines.append(f"{model} {task}: honest FLOPs <= {limit:.2f}: not run")
            continue
        value = rows.loc[(model, task), "honest_flops"]
        verdict = "met" if value <= limit else "MISSED"
        lines.append(f"{model} {task}: honest FLOPs {value:.3f} <= {limit:.2f}: {verdict}")
    for model, (op, limit) in average_targets.items():
        if model not in averages.index:
            lines.append(f"{model} task average: honest FLOPs {op} {limit:.2f}: not run")
            continue
        value = averages.loc[model, "honest_flops"]
        ok = value <= limit if op == "<=" else value < limit
        verdict = "met" if ok else "MISSED"
        lines.append(f"{model} task average: honest FLOPs {value:.3f} {op} {limit:.2f}: {verdict}")
    worst = rows.violation_rate.max()
    over = rows[rows.violation_rate > delta + 1e-12]
    verdict = "met" if over.empty else "MISSED on " + ", ".join(f"{m} {t}" for m, t in over.index)
    lines.append(f"re-split violation rate <= delta = {delta} on every row (worst {worst:.2f}): ")
    lines[-1] += verdict
    return [f"- {line}" for line in lines]


def auto_section(frame: pd.DataFrame, delta: float) -> list[str]:
    """The classifier=auto table and issue #29's targets, when the study ran it."""
    table = selected(frame)
    if table.empty:
        return []
    no_row_above = "met" if (table.honest_flops <= 1.0 + 1e-12).all() else "MISSED"
    return [
        f"classifier=auto ({AUTO}), chosen on the calibration split only: its candidate "
        "('best'), the test drop in points and honest FLOPs, its re-split violation rates (the "
        "whole procedure, selection included, rerun on every re-split; pool: the drop over the "
        "pool) and the distance to the tuned oracle:",
        table.assign(acc_drop=100 * table.acc_drop).to_markdown(index=False, floatfmt=".3f"),
        "Issue #29's targets for classifier=auto:\n"
        + "\n".join(target_lines(table, delta, AUTO_ROW_TARGETS, AUTO_AVERAGE_TARGETS))
        + f"\n- no row above 1.000: {no_row_above}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2_135m", "gemma3_270m"])
    parser.add_argument("--tasks", nargs="+", default=["rules", "sst2", "ag_news"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help=f"labels (quoted), or presets {list(PRESETS)}; labels: {', '.join(METHODS)}",
    )
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--bound", default="binomial", help="risk.bound: binomial, hb, wsr")
    parser.add_argument("--loss", default="flip", help="risk.loss: flip, drop")
    parser.add_argument("--resplits", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n-calibration", type=int, default=400)
    parser.add_argument(
        "--n-calibration-for",
        nargs="+",
        default=[],
        metavar="TASK=N",
        help="a task's own calibration size, e.g. ag_news=2000",
    )
    parser.add_argument(
        "--task-overrides",
        nargs="+",
        default=[],
        metavar="TASK:OVERRIDE",
        help="extra overrides of one task's jobs, e.g. sst2:task.calibration_from=test",
    )
    parser.add_argument(
        "--first-layer",
        default="auto",
        help="classifier.first_layer of the risk-controlled runs (auto, or 1 = every layer)",
    )
    parser.add_argument("--experiment", default="risk")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    args = parser.parse_args()
    if args.resplits < 10:
        parser.error("--resplits: use at least 10 random calibration/test splits")
    try:
        labels = chosen_methods(args.methods)
        RiskLimit(args.epsilon, args.delta, bound=args.bound, loss=args.loss)
        sizes = per_task_values(args.n_calibration_for, args.tasks, "--n-calibration-for")
        extras = per_task_values(args.task_overrides, args.tasks, "--task-overrides")
        n_calibration = {t: int(v[-1]) for t, v in sizes.items()}
    except AdaInferError as err:
        parser.error(str(err))
    except ValueError as err:
        parser.error(f"--n-calibration-for: a size is not a whole number ({err})")
    use_shared_data()

    start, rows = time.perf_counter(), []
    for model in args.models:
        for task in args.tasks:
            n_cal = n_calibration.get(task, args.n_calibration)
            common = [*study_setting(model, task, args, n_cal), f"risk.resplits={args.resplits}"]
            fill = {
                "eps": args.epsilon,
                "first": f"classifier.first_layer={args.first_layer}",
                "bound": args.bound,
                "loss": args.loss,
            }
            for label in run_order(labels):
                extra = [o.format(**fill) for o in METHODS[label]]
                metrics = run_pipeline(common + extra + extras.get(task, []))
                for name, m in per_task(metrics, task).items():
                    row = {"model": model, "task": name, "method": label}
                    row["chosen"] = chosen_name(m)
                    rows.append(row | {k: m.get(k) for k in KEEP + RISK_METRICS})
            print(f"[{time.perf_counter() - start:.0f} s] {model} {task} done", file=sys.stderr)

    frame = pd.DataFrame(rows)
    frame["cell"] = cells(frame.acc_drop, frame.honest_flops_ratio)
    main_table = frame.pivot(index=["model", "task"], columns="method", values="cell")
    main_table = main_table[labels].reset_index()
    full = frame.groupby(["model", "task"]).acc_full.first().rename("full acc").reset_index()
    main_table = full.merge(main_table, on=["model", "task"])
    means = frame.groupby(["model", "method"])[["acc_drop", "honest_flops_ratio"]].mean()
    avg = means.reset_index()
    avg["cell"] = cells(avg.acc_drop, avg.honest_flops_ratio)
    avg = avg.pivot(index="model", columns="method", values="cell")[labels].reset_index()
    avg.insert(1, "task", "**Avg**")
    avg.insert(2, "full acc", frame.groupby("model").acc_full.mean().reindex(avg.model).to_numpy())
    main_table = pd.concat([main_table, avg], ignore_index=True).sort_values(
        ["model", "task"], key=lambda c: c.str.replace("**Avg**", "~", regex=False), kind="stable"
    )
    checks = frame[frame.method.map(controlled)][
        [
            "model",
            "task",
            "method",
            "risk_certified",
            "risk_resplit_exceed_rate",
            "risk_resplit_drop_mean",
            "risk_resplit_drop_sd",
            "risk_resplit_drop_max",
            "risk_resplit_pool_exceed_rate",
            "risk_resplit_certified_rate",
            "exit_layer_mean",
        ]
    ]
    lenses = frame[frame.method.isin(["svm", "tuned svm"])].pivot(
        index=["model", "task"], columns="method", values=["agree_mean", "agree_half_layer"]
    )
    lenses.columns = [f"{probe} {what}" for what, probe in lenses.columns]
    lenses = lenses.reset_index()
    best = best_deployable(frame)
    head = (
        f"{args.shots}-shot, n_train={args.n_train}, n_test={args.n_test}, "
        f"n_calibration={args.n_calibration}, epsilon={args.epsilon}, delta={args.delta}, "
        f"resplits={args.resplits}"
    )
    if (args.bound, args.loss) != ("binomial", "flip"):
        head += f", risk.bound={args.bound}, risk.loss={args.loss}"
    for task, values in sizes.items():
        head += f"; {task}: n_calibration={values[-1]}"
    for task, values in extras.items():
        head += f"; {task}: {' '.join(values)}"
    text = "\n\n".join(
        [
            head,
            "Per method: accuracy drop in points (full model - exit; + is a loss) / honest FLOPs "
            "ratio (probes, translators, classifier included; 1.000 = the full model):",
            main_table.to_markdown(index=False, floatfmt=".3f"),
            f"Risk control over {args.resplits} random calibration/test splits "
            f"(exceed_rate: share of splits whose test drop > epsilon; guarantee: about delta; "
            "drop_sd: the spread of the test drops, the test part's noise and the threshold's "
            "variation with the calibration draw; pool_exceed_rate: share of splits whose drop "
            "over the whole pool, the population the calibration split is drawn from, > epsilon: "
            "what the guarantee bounds, without the test part's noise):",
            checks.to_markdown(index=False, floatfmt=".3f"),
            "How well each probe reads the final answer off the layers, on the test split "
            "(agree_mean: share of (instance, layer < L) pairs whose argmax is the last layer's; "
            "agree_half_layer: first layer where half the instances agree); svm = logit lens:",
            lenses.to_markdown(index=False, floatfmt=".3f")
            if len(lenses)
            else "(neither svm nor tuned svm ran)",
            "Best deployable certified policy per row: of the risk-controlled runs that certified "
            "a threshold, the one with the lowest honest FLOPs (the full model, 1.000, where none "
            "did). The pick is made on the test split: a summary of this study, not a selection "
            "procedure. acc_drop: in points (+ is a loss); violation_rate: its re-split violation "
            "rate (Avg: the largest); oracle: tuned oracle_consistent's honest FLOPs; "
            "distance: best - oracle:",
            best.assign(acc_drop=100 * best.acc_drop).to_markdown(index=False, floatfmt=".3f"),
            "Issue #14's targets for the best deployable policy:\n"
            + "\n".join(target_lines(best, args.delta)),
            *auto_section(frame, args.delta),
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
