"""Print the runs of an MLflow experiment as a table of the AdaInfer metrics.

python scripts/show_runs.py                 # experiment "adainfer"
python scripts/show_runs.py --experiment my-sweep --csv runs.csv
python scripts/show_runs.py --where classifier=svm shots=5 --no-suites   # runs with these params
"""

from __future__ import annotations

import argparse

import mlflow

PARAMS = ["model", "task", "shots", "classifier", "seed", "n_test"]
METRICS = ["acc_full", "acc", "exit_layer_mean", "exit_layer_var", "flops_ratio"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="adainfer")
    parser.add_argument("--tracking-uri", default=None, help="default: MLflow's own default")
    parser.add_argument("--csv", default=None, help="also write the table here")
    parser.add_argument("--metrics", nargs="+", default=METRICS, help="metric columns to show")
    parser.add_argument(
        "--no-suites", action="store_true", help="leave out suite parents (keep per-task runs)"
    )
    parser.add_argument(
        "--where", nargs="+", default=[], metavar="PARAM=VALUE", help="keep runs with these params"
    )
    args = parser.parse_args()
    where = dict(w.split("=", 1) for w in args.where if "=" in w)
    if len(where) != len(args.where):
        parser.error("--where takes PARAM=VALUE pairs, e.g. --where classifier=svm shots=5")
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    matching = " and ".join(f"params.`{key}` = '{value}'" for key, value in where.items())
    runs = mlflow.search_runs(
        experiment_names=[args.experiment], filter_string=matching, order_by=["start_time ASC"]
    )
    if runs.empty:
        raise SystemExit(
            f"no runs in experiment {args.experiment!r} at {mlflow.get_tracking_uri()}"
            + (f" with {' '.join(args.where)} (--where takes logged params)" if where else "")
        )
    if args.no_suites and "params.suite_tasks" in runs:
        runs = runs[runs["params.suite_tasks"].isna()]
    keys = ("params.model", "params.shots", "params.task")
    runs = runs.sort_values([c for c in keys if c in runs], kind="stable")
    columns = ["status"] + [f"params.{p}" for p in PARAMS] + [f"metrics.{m}" for m in args.metrics]
    table = runs[[c for c in columns if c in runs]].rename(columns=lambda c: c.split(".")[-1])
    print(table.to_markdown(index=False, floatfmt=".3f"))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
