"""Full-model and AdaInfer (SVM) accuracy and FLOPs ratio for every task of the paper.

Runs the pipeline for each task at each shot count (tracked in MLflow like any job, with layer
traces cached), then prints a Markdown table with the paper's group averages and writes it to
``--out``. Needs the data sets: ``ADAINFER_DATA_DIR`` (or ../shared/data beside the repo).

    python scripts/task_table.py --model smollm2_135m --shots 0 5 --n 100 --out docs/TASKS.md
    python scripts/task_table.py --tasks squad --shots 0 5 --n 100   # some rows only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from common import per_task, run_pipeline, use_shared_data

GROUPS = {
    "qa": ["mmlu", "commonsense_qa", "squad"],
    "classification": ["sst2", "ag_news"],
    "rules": ["rules"],  # a suite: one row per member task
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--classifier", default="svm")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 5])
    parser.add_argument("--n", type=int, default=100, help="train and test instances per task")
    parser.add_argument("--experiment", default="task-table")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    known = [task for tasks in GROUPS.values() for task in tasks]
    parser.add_argument(
        "--tasks", nargs="+", choices=known, default=known, help="only these tasks' rows"
    )
    args = parser.parse_args()
    use_shared_data()

    rows = []
    for group, tasks in GROUPS.items():
        for task in (t for t in tasks if t in args.tasks):
            for shots in args.shots:
                overrides = [
                    f"model={args.model}",
                    f"task={task}",
                    f"classifier={args.classifier}",
                    f"shots={shots}",
                    f"task.n_train={args.n}",
                    f"task.n_test={args.n}",
                    f"mlflow.experiment={args.experiment}",
                ]
                for member, m in per_task(run_pipeline(overrides), task).items():
                    rows.append(
                        {
                            "group": group,
                            "task": member,
                            "shots": shots,
                            "acc_full": m["acc_full"],
                            "acc": m["acc"],
                            "flops_ratio": m["flops_ratio"],
                            "exit_layer_mean": m["exit_layer_mean"],
                        }
                    )
    table = pd.DataFrame(rows)
    avg = table.groupby(["group", "shots"], as_index=False)[
        ["acc_full", "acc", "flops_ratio", "exit_layer_mean"]
    ].mean()
    avg["task"] = "**Avg**"
    table = pd.concat([table, avg], ignore_index=True)
    order = {g: i for i, g in enumerate(GROUPS)}
    table = table.sort_values(
        ["group", "shots", "task"], key=lambda c: c.map(order) if c.name == "group" else c
    )
    command = " ".join(["python", "scripts/task_table.py", *sys.argv[1:]])
    text = (
        f"Model `{args.model}`, classifier `{args.classifier}`, {args.n} train (fits the "
        f"classifier, supplies demonstrations) and {args.n} test instances per task "
        f"(seeded sample).\n\nMade by: `{command}`\n\n"
        + table.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
