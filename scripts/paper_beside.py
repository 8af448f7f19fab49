"""Our Tables 8/9 beside the paper's: same task, setting and method, one column per model.

Reads the paper's numbers (``../shared/reference/paper_tables.csv``: accuracy and FLOPs ratio in
%, zero-shot and few-shot = the average over 5/10/15/20 shots) and report folders of ours
(``python -m adainfer.report --out DIR``: their ``tasks_<group>.csv``; a row found in several
folders is taken from the first), and prints one Markdown table per paper table. Our few-shot
cell is the mean over the shot counts the reports hold among 5/10/15/20 (``--few-shots``), and
the text above the tables says which ones that was for each task.

``--dropped`` adds, per model of ours, how many demonstrations were dropped so that prompts fit
the context, and from how many prompts: the ``demos_dropped`` and ``prompts_truncated``
metrics of the runs behind a cell, summed over its shot counts and (for ``rules``) the suite's
tasks, train and test prompts together. They come from CSVs written by
``python scripts/show_runs.py --no-suites --metrics demos_dropped prompts_truncated --csv F``
(what the runs logged) or by ``python scripts/prompt_lengths.py --csv F`` (the same prompts
encoded without the LLM); for each cell, the first CSV given that covers all its shot counts.

    python scripts/paper_beside.py --ours docs/results --out docs/results/paper_beside.md
    python scripts/paper_beside.py --ours docs/results/fewshot docs/results \
        --dropped docs/results/fewshot/dropped.csv --out docs/results/paper_beside.md
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
KEYS = ["model", "shots", "classifier", "feature_set"]


def paper_cells(path: Path) -> pd.DataFrame:
    """(table, model, setting, method, task) -> "acc / flops" in %."""
    frame = pd.read_csv(path, comment="#", dtype={"table": str})
    frame["cell"] = [f"{a:.1f} / {f:.1f}" for a, f in zip(frame.acc, frame.flops, strict=True)]
    return frame[["table", "model", "setting", "method", "task", "cell"]]


def our_cells(
    folders: list[Path], few: list[int]
) -> tuple[pd.DataFrame, dict[tuple[str, str], list[int]]]:
    """The same cells from our report CSVs (base feature set); the shots averaged per
    (model, task)."""
    rows, used = [], {}
    for group, (table, tasks) in GROUPS.items():
        frame = _report_rows(folders, f"tasks_{group}.csv")
        rows += _group_rows(frame, table, tasks, few, used)
    frame = _report_rows(folders, "tasks_rules.csv")
    rows += _group_rows(frame, "9", ["Avg"], few, used, rename="rules")
    return pd.DataFrame(rows), used


def _report_rows(folders: list[Path], name: str) -> pd.DataFrame | None:
    """One report CSV from every folder that has it; a setting's numbers from the first."""
    frames = [pd.read_csv(f / name) for f in folders if (f / name).exists()]
    if not frames:
        return None
    # Each value from the first folder that has it: a report holds only the tasks it ran.
    return pd.concat(frames, ignore_index=True).groupby(KEYS, as_index=False, sort=False).first()


def _group_rows(frame, table, tasks, few, used, rename=None) -> list[dict]:
    if frame is None:
        return []
    frame = frame[frame.feature_set == "base"]
    rows = []
    for model, part in frame.groupby("model"):
        for setting, shots in (("zero", [0]), ("few", few)):
            chosen = part[part.shots.isin(shots)]
            if chosen.empty:
                continue
            for task in tasks:
                ran = chosen[chosen[f"{task}/acc"].notna()]  # a report holds only what it ran
                if ran.empty:
                    continue
                if setting == "few":
                    used[(model, rename or task)] = sorted(ran.shots.unique().tolist())
                for method in METHODS:
                    by = ran[ran.classifier == (method if method != "full" else "svm")]
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


def dropped_cells(
    paths: list[Path], used: dict[tuple[str, str], list[int]]
) -> dict[tuple[str, str, str], str]:
    """(model, task, setting) -> "demos dropped / prompts that lost any", summed over the
    settings of the cell's shot counts, from the first CSV that covers all of them.

    A CSV is either show_runs.py's (a row per run, a suite's tasks apart; classifier svm is
    read, as every classifier of a setting sees the same prompts) or prompt_lengths.py's (a row
    per model, task and shot count, the prompts encoded without running the LLM).
    """
    members = {task: [task] for _, tasks in GROUPS.values() for task in tasks}
    known = {t for ts in members.values() for t in ts}
    cells = {}
    for path in paths:
        frame = pd.read_csv(path)
        if "classifier" in frame:
            frame = frame[frame.classifier == "svm"]
        frame = frame.drop_duplicates(subset=["model", "task", "shots"])
        for (model, task), few in used.items():
            for setting, shots in (("zero", [0]), ("few", few)):
                if (model, task, setting) in cells:
                    continue
                chosen = frame[(frame.model == model) & frame.shots.isin(shots)]
                chosen = chosen[
                    chosen.task.isin(members[task]) if task in members else ~chosen.task.isin(known)
                ]
                if sorted(chosen.shots.unique().tolist()) != shots:
                    continue  # not every setting behind the cell is in this CSV
                dropped, truncated = chosen.demos_dropped.sum(), chosen.prompts_truncated.sum()
                cells[(model, task, setting)] = f"{dropped:.0f} / {truncated:.0f}"
    return cells


def side_by_side(
    paper: pd.DataFrame, ours: pd.DataFrame, dropped: dict[tuple[str, str, str], str]
) -> dict[str, pd.DataFrame]:
    both = pd.concat([paper, ours], ignore_index=True)
    tables = {}
    for table, part in both.groupby("table"):
        wide = part.pivot_table(
            index=["task", "setting", "method"], columns="model", values="cell", aggfunc="first"
        )
        ours_models = sorted(m for m in wide.columns if m not in PAPER_MODELS)
        wide = wide[[m for m in PAPER_MODELS if m in wide.columns] + ours_models]
        order = {m: i for i, m in enumerate(METHODS)}
        wide = wide.reset_index()
        if dropped:
            for model in ours_models:
                wide[f"dropped {model}"] = [
                    dropped.get((model, task, setting), "")
                    for task, setting in zip(wide.task, wide.setting, strict=True)
                ]
        wide["_m"] = wide.method.map(order)
        wide["_s"] = wide.setting.map({"zero": 0, "few": 1})
        wide = wide.sort_values(["task", "_s", "_m"]).drop(columns=["_m", "_s"])
        tables[table] = wide.fillna("")
    return tables


def shots_note(used: dict[tuple[str, str], list[int]]) -> str:
    """Which shot counts our few-shot cells average, e.g. "5, 10 shots on sst2 (both models)"."""
    by_shots: dict[tuple[int, ...], dict[str, list[str]]] = {}
    for (model, task), shots in sorted(used.items()):
        by_shots.setdefault(tuple(shots), {}).setdefault(task, []).append(model)
    models = sorted({model for model, _ in used})
    parts = []
    for shots, tasks in sorted(by_shots.items(), key=lambda kv: (-len(kv[0]), kv[0])):
        by_models: dict[tuple[str, ...], list[str]] = {}
        for task, ms in tasks.items():
            by_models.setdefault(tuple(ms), []).append(task)
        where = "; ".join(
            f"{', '.join(ts)} ({'both models' if list(ms) == models else ', '.join(ms)})"
            for ms, ts in by_models.items()
        )
        parts.append(f"{', '.join(map(str, shots))} shots on {where}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ours",
        type=Path,
        nargs="+",
        default=[REPO / "docs" / "results"],
        help="report folders; a setting's row is taken from the first that has it",
    )
    parser.add_argument("--paper", type=Path, default=PAPER)
    parser.add_argument("--few-shots", type=int, nargs="+", default=[5, 10, 15, 20])
    parser.add_argument(
        "--dropped",
        type=Path,
        nargs="+",
        default=[],
        help="show_runs.py or prompt_lengths.py CSVs, the first covering a cell is used",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ours, used = our_cells(args.ours, args.few_shots)
    dropped = dropped_cells(args.dropped, used) if args.dropped else {}
    tables = side_by_side(paper_cells(args.paper), ours, dropped)
    lines = [
        "Each cell: accuracy (%) / FLOPs ratio (%, Eq. 2). `few`: the paper averages 5, 10, 15 "
        f"and 20 shots; ours averages {shots_note(used)}"
        + ". `rules`: the paper's rule-understanding average; ours, the `rules` suite's.",
        "",
    ]
    if dropped:
        lines += [
            "`dropped <model>`: demonstrations dropped so that prompts fit the model's context / "
            "prompts that lost any, summed over the train and test prompts of the runs "
            "behind the row (every shot count averaged; for `rules` every task of the suite), "
            "from "
            + ", then ".join(f"`{p.name}`" for p in args.dropped)
            + "; empty where none covers the row.",
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
