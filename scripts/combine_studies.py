"""The best deployable certified policy per row, over several risk studies' runs.

``scripts/risk_study.py`` writes its runs to ``<out>/risk_runs.csv``. A follow-up study often
reruns a few tasks in another setting (more calibration or test data, another bound); this
script puts those rows in place of the first study's and prints the best-deployable table and
issue #14's targets as risk_study prints them, and, where the studies ran ``classifier=auto``,
its table and issue #29's targets. A task's rows come wholly from the last file
that has the task (for that model), so no row mixes two settings; each file's header line
(its ``risk.md``) says what its setting was.

    python scripts/combine_studies.py docs/risk/exits/smollm2/risk_runs.csv \\
        docs/risk/exits_pool/ag_news_svm_wsr/risk_runs.csv \\
        docs/risk/exits_pool/sst2_train_test_wsr/risk_runs.csv

No LLM, no MLflow: it reads the CSV files only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from risk_study import auto_section, best_deployable, target_lines

COLUMNS = ("model", "task", "method", "acc_drop", "honest_flops_ratio", "risk_certified")


def combined(paths: list[Path]) -> tuple[pd.DataFrame, dict[tuple[str, str], Path]]:
    """The runs of every file, each (model, task) from the last file that has it, and which
    file that was."""
    taken: dict[tuple[str, str], pd.DataFrame] = {}
    source: dict[tuple[str, str], Path] = {}
    for path in paths:
        runs = pd.read_csv(path)
        missing = [c for c in (*COLUMNS, "risk_resplit_exceed_rate") if c not in runs.columns]
        if missing:
            raise SystemExit(
                f"{path}: no column(s) {missing}: not a risk_runs.csv of scripts/risk_study.py"
            )
        for key, rows in runs.groupby(["model", "task"], sort=False):
            taken[key], source[key] = rows, path
    return pd.concat(taken.values(), ignore_index=True), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="risk_runs.csv files, later wins")
    parser.add_argument("--delta", type=float, default=0.1, help="the studies' risk.delta")
    args = parser.parse_args()
    frame, source = combined(args.runs)
    print("Rows from:")
    for (model, task), path in sorted(source.items()):
        print(f"- {model} {task}: {path}")
    best = best_deployable(frame)
    print()
    print(best.to_markdown(index=False, floatfmt=".3f"))
    print()
    print("Issue #14's targets for the best deployable policy:")
    print("\n".join(target_lines(best, args.delta)))
    auto = auto_section(frame, args.delta)  # empty when no file ran classifier=auto
    if auto:
        print()
        print("\n\n".join(auto))


if __name__ == "__main__":
    main()
