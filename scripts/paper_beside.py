"""Our Tables 8/9 beside the paper's: same task, setting and method, one column per model.

Reads the paper's numbers (``../shared/reference/paper_tables.csv``: accuracy and FLOPs ratio in
%, zero-shot and few-shot = the average over 5/10/15/20 shots) and a report folder of ours
(``python -m adainfer.report --out DIR``: its ``tasks_<group>.csv``), and prints one Markdown
table per paper table. Our few-shot column is the average over the shot counts the report
holds among 5/10/15/20 (``--few-shots``), and the table says which ones that was.

    python scripts/paper_beside.py --ours docs/results --out docs/results/paper_beside.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "reference" / "paper_tables.csv"
GROUPS = {
    "qa": ("8", ["mmlu", "commonsense_qa", "squad"]),
    "classification": ("9", ["sst2", "ag_news"]),
}
METHODS = ["full", "svm", "crf", "gap"]
PAPER_MODELS = ["llama2_7b", "llama2_13b", "opt_13b"]


def paper_cells(path: Path) -> pd.DataFrame:
    """(table, model, setting, method, task) -> "acc / flops" in %."""
    frame = pd.read_csv(path, comment="#", dtype={"table": str})
    frame["cell"] = [f"{a:.1f} / {f:.1f}" for a, f in zip(frame.acc, frame.flops, strict=True)]
    return frame[["table", "model", "setting", "method", "task", "cell"]]


def our_cells(folder: Path, few: list[int]) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """The same cells from our report CSVs (base feature set); the shots averaged per model."""
    rows, used = [], {}
    for group, (table, tasks) in GROUPS.items():
        rows += _group_rows(folder / f"tasks_{group}.csv", table, tasks, few, used)
    rows += _group_rows(folder / "tasks_rules.csv", "9", ["Avg"], few, used, rename="rules")
    return pd.DataFrame(rows), used


def _group_rows(path, table, tasks, few, used, rename=None) -> list[dict]:
    if not path.exists():
        return []
    frame = pd.read_csv(path)
    frame = frame[frame.feature_set == "base"]
    rows = []
    for model, part in frame.groupby("model"):
        for setting, shots in (("zero", [0]), ("few", few)):
            chosen = part[part.shots.isin(shots)]
            if chosen.empty:
                continue
            if setting == "few":
                used[model] = sorted(chosen.shots.unique().tolist())
            for task in tasks:
                for method in METHODS:
                    by = chosen[chosen.classifier == (method if method != "full" else "svm")]
                    if by.empty:
                        continue
                    acc_key = f"{task}/acc_full" if method == "full" else f"{task}/acc"
                    acc = 100 * by[acc_key].mean()
                    flops = 100.0 if method == "full" else 100 * by[f"{task}/flops_ratio"].mean()
                    rows.append(
                        {
                            "table": table,
                            "model": model,
                            "setting": setting,
                            "method": method,
                            "task": rename or task,
                            "cell": f"{acc:.1f} / {flops:.1f}",
                        }
                    )
    return rows


def side_by_side(paper: pd.DataFrame, ours: pd.DataFrame) -> dict[str, pd.DataFrame]:
    both = pd.concat([paper, ours], ignore_index=True)
    tables = {}
    for table, part in both.groupby("table"):
        wide = part.pivot_table(
            index=["task", "setting", "method"], columns="model", values="cell", aggfunc="first"
        )
        ours_models = [m for m in wide.columns if m not in PAPER_MODELS]
        wide = wide[[m for m in PAPER_MODELS if m in wide.columns] + sorted(ours_models)]
        order = {m: i for i, m in enumerate(METHODS)}
        wide = wide.reset_index()
        wide["_m"] = wide.method.map(order)
        wide["_s"] = wide.setting.map({"zero": 0, "few": 1})
        wide = wide.sort_values(["task", "_s", "_m"]).drop(columns=["_m", "_s"])
        tables[table] = wide.fillna("")
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--paper", type=Path, default=PAPER)
    parser.add_argument("--few-shots", type=int, nargs="+", default=[5, 10, 15, 20])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ours, used = our_cells(args.ours, args.few_shots)
    tables = side_by_side(paper_cells(args.paper), ours)
    lines = [
        "Each cell: accuracy (%) / FLOPs ratio (%, Eq. 2). `few`: the paper averages 5, 10, 15 "
        "and 20 shots; ours averages "
        + "; ".join(f"{m}: {', '.join(map(str, s))}" for m, s in sorted(used.items()))
        + " shots. `rules`: the paper's rule-understanding average; ours, the `rules` suite's.",
        "",
    ]
    for table, frame in tables.items():
        lines += [f"#### Table {table}", "", frame.to_markdown(index=False), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
