"""The paper's tables, built from the per-task runs that ``load_runs`` returns.

Every table is a flat DataFrame: key columns (model, shots, ...) then value columns named
``<column>/<metric>`` after the MLflow metric they hold (``sst2/acc``, ``Avg/flops_ratio``,
``crf/acc``), so a cell can be traced back to a run by name; the generation table, which
pivots nothing, names its columns after the metrics themselves. Runs that share every key (seeds,
repeats) are averaged, and the table says so. A table whose inputs are missing from the
selection is skipped with a one-line reason instead of failing the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from adainfer.report.runs import FIT_SETTINGS, GEN_METRICS, GROUP_ORDER, task_order

MAIN_METRICS = ("acc_full", "acc", "flops_ratio")
POLICY_METRICS = ("acc", "flops_ratio")
CLASSIFIER_ORDER = ("svm", "crf", "gap", "logreg", "never", "oracle_consistent", "oracle_gold")
FEATURE_SET_ORDER = ("base", "attn", "mlp", "hidden", "all")


@dataclass
class Table:
    """One report table: a file-name stem, a title, the data and a note on how to read it."""

    name: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as Markdown under its title, with its notes (as printed and saved)."""
        shown = self.frame.astype(object).where(self.frame.notna(), None)  # blank, not "nan"
        body = shown.to_markdown(index=False, floatfmt=".3f", missingval="")
        notes = "".join(f"\n_{note}_\n" for note in self.notes)
        return f"### {self.title}\n{notes}\n{body}\n"


@dataclass
class Tables:
    """The tables that could be built and, for each one that could not, why."""

    tables: list[Table] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"no table {name!r}: built {self.names}, skipped {list(self.skipped)}")

    @property
    def names(self) -> list[str]:
        return [table.name for table in self.tables]


def _rank(order: Iterable[str]) -> Callable[[str], tuple[int, str]]:
    order = tuple(order)
    return lambda value: (order.index(value) if value in order else len(order), str(value))


RANKS: dict[str, Callable] = {
    "task": task_order,
    "classifier": _rank(CLASSIFIER_ORDER),
    "feature_set": _rank(FEATURE_SET_ORDER),
    "fit_setting": _rank(FIT_SETTINGS),
}


def _sorted_values(values: Iterable, column: str) -> list:
    return sorted(set(values), key=RANKS.get(column, lambda v: (0, v)))


def sort_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows ordered by ``keys``, tasks / classifiers / feature sets in the paper's order."""

    def key(col: pd.Series) -> pd.Series:
        if col.name not in RANKS:
            return col
        ranks = {v: i for i, v in enumerate(_sorted_values(col, str(col.name)))}
        return col.map(ranks)

    return frame.sort_values(keys, key=key, kind="stable").reset_index(drop=True)


def wide(
    runs: pd.DataFrame, keys: list[str], across: str, metrics: tuple[str, ...]
) -> tuple[pd.DataFrame, bool]:
    """Runs pivoted to one row per ``keys`` and ``<value of across>/<metric>`` columns.

    Returns the table and whether any cell averages several runs.
    """
    grouped = runs.groupby([*keys, across])
    cells = grouped[list(metrics)].mean().unstack(across)
    values = _sorted_values(runs[across], across)
    columns = [(metric, value) for value in values for metric in metrics]
    cells = cells.reindex(columns=pd.MultiIndex.from_tuples(columns))
    cells.columns = [f"{value}/{metric}" for metric, value in columns]
    return sort_rows(cells.reset_index(), keys), bool((grouped.size() > 1).any())


def _averaged_note(averaged: bool) -> list[str]:
    return ["cells with several runs (seeds or repeats) show their mean"] if averaged else []


def task_tables(
    runs: pd.DataFrame, name: str, title: str, classifiers: tuple[str, ...] | None = None
) -> Tables:
    """Tables 2/3 (and 4 with ``classifiers``): per task group, Acc full / AdaInfer, FLOPs, Avg.

    Rows are model x shots x classifier x feature set; only runs whose exit
    classifier was fitted on the task itself (``fit_setting == intra``) take part.
    """
    result = Tables()
    chosen = runs[runs.fit_setting == "intra"]
    if classifiers is not None:
        chosen = chosen[chosen.classifier.isin(classifiers)]
    if chosen.empty:
        wanted = f"with classifier in {list(classifiers)}" if classifiers else "fitted on own task"
        result.skipped[name] = f"no runs {wanted}"
        return result
    for group in GROUP_ORDER:
        members = chosen[chosen.group == group]
        if members.empty:
            continue
        keys = ["model", "shots", "classifier", "feature_set"]
        table, averaged = wide(members, keys, "task", MAIN_METRICS)
        tasks = _sorted_values(members.task, "task")
        for metric in MAIN_METRICS:
            table[f"Avg/{metric}"] = table[[f"{t}/{metric}" for t in tasks]].mean(axis=1)
        notes = _averaged_note(averaged)
        if table[[f"{t}/acc" for t in tasks]].isna().any().any():
            notes.append("Avg is over the tasks a row has; empty cells are tasks it lacks")
        result.tables.append(Table(f"{name}_{group}", f"{title}: {group}", table, notes))
    return result


def classifier_table(runs: pd.DataFrame) -> Tables:
    """Tables 8/9: every exit classifier side by side, a row per model x shots x task."""
    chosen = runs[runs.fit_setting == "intra"]
    if chosen.classifier.nunique() < 2:
        return Tables(skipped={"classifiers": "fewer than two classifiers among the runs"})
    keys = ["model", "shots", "task", "feature_set"]
    table, averaged = wide(chosen, keys, "classifier", POLICY_METRICS)
    full = chosen.groupby(keys).acc_full.mean().rename("full/acc").reset_index()
    table = table.merge(full, on=keys, how="left")
    table = table[[*keys, "full/acc", *[c for c in table if "/" in c and c != "full/acc"]]]
    title = "All classifiers (Tables 8/9): AdaInfer Acc and FLOPs ratio per classifier"
    return Tables([Table("classifiers", title, table, _averaged_note(averaged))])


def _fit_source(row: pd.Series) -> str:
    return {
        "intra": "own",
        "inter-task": row.fit_tasks,
        "multi-task": f"own+{row.fit_tasks}",
        "inter-model": row.fit_model,
    }.get(row.fit_setting, f"{row.fit_tasks}@{row.fit_model}")


def generalization_table(runs: pd.DataFrame) -> Tables:
    """Table 6: the classifier fitted on its own task vs other tasks, both, or another model.

    Only the (model, shots, classifier, feature set, task) points that have a generalization
    run are shown, each beside its intra run, so every row compares like with like.
    """
    other = runs[runs.fit_setting != "intra"]
    if other.empty:
        reason = "no runs fitted on other tasks or models (fit.tasks / fit.model)"
        return Tables(skipped={"generalization": reason})
    point = ["model", "shots", "classifier", "feature_set", "task"]
    intra = runs[runs.fit_setting == "intra"].merge(other[point].drop_duplicates(), on=point)
    chosen = pd.concat([intra, other], ignore_index=True)
    chosen["fit"] = chosen.apply(_fit_source, axis=1)
    keys = ["model", "shots", "classifier", "feature_set", "fit_setting", "fit"]
    table, averaged = wide(chosen, keys, "task", POLICY_METRICS)
    title = "Generalization (Table 6): where the exit classifier was fitted"
    return Tables([Table("generalization", title, table, _averaged_note(averaged))])


def factor_table(runs: pd.DataFrame) -> Tables:
    """Table 7: the classifier's features (``feature_set``) compared at fixed settings."""
    chosen = runs[runs.fit_setting == "intra"]
    counts = chosen.groupby(["model", "shots", "classifier"]).feature_set.transform("nunique")
    chosen = chosen[counts > 1]
    if chosen.empty:
        return Tables(skipped={"factors": "no setting was run with more than one feature_set"})
    table, averaged = wide(
        chosen, ["model", "shots", "classifier", "feature_set"], "task", POLICY_METRICS
    )
    title = "Factor study (Table 7): features the exit classifier sees"
    return Tables([Table("factors", title, table, _averaged_note(averaged))])


GEN_KEYS = ["model", "task", "shots", "classifier", "probe", "feature_set", "gen_kv_fill"]


def generation_table(runs: pd.DataFrame) -> Tables:
    """Generated answers (``task.generate=true``): the full model's and the early-exit ones.

    A row per model x task x shots x classifier x probe x feature set x ``gen_kv_fill`` (how the
    layers an exited token skipped got its K/V); only runs that logged ``gen_em`` and
    fitted their classifier on their own task take part. Columns are the ``gen_*`` metrics of
    :data:`GEN_METRICS` that some of those runs logged (``gen_f1``: SQuAD only), in its order.
    """
    if "gen_em" not in runs or runs.gen_em.isna().all():
        return Tables(skipped={"generation": "no run generated its answers (task.generate=true)"})
    generated = runs[runs.gen_em.notna()]
    chosen = generated[generated.fit_setting == "intra"]
    if chosen.empty:
        return Tables(skipped={"generation": "no generating run fitted on its own task"})
    metrics = [m for m in GEN_METRICS if m in chosen and chosen[m].notna().any()]
    grouped = chosen.groupby(GEN_KEYS, dropna=False)
    table = sort_rows(grouped[metrics].mean().reset_index(), GEN_KEYS)
    notes = [
        "`gen_*_full`: the full model's answers; the other `gen_*`: the policy's, exiting token "
        "by token (`gen_exit_layer_mean`: over the tokens after the first, which the prefill "
        "reads in full)"
    ]
    notes += _averaged_note(bool((grouped.size() > 1).any()))
    if len(chosen) < len(generated):
        notes.append(
            f"{len(generated) - len(chosen)} run(s) fitted on other tasks or models left out"
        )
    title = "Generated answers (task.generate=true): full model and early exit"
    return Tables([Table("generation", title, table, notes)])


def build_tables(runs: pd.DataFrame) -> Tables:
    """All report tables from ``load_runs`` output, in the paper's order, with skip reasons."""
    result = Tables()
    parts = [
        task_tables(runs, "tasks", "Acc (full / AdaInfer) and FLOPs ratio per task (Tables 2/3)"),
        task_tables(runs, "gap_vs_crf", "GAP vs CRF (Table 4)", classifiers=("gap", "crf")),
        classifier_table(runs),
        generalization_table(runs),
        factor_table(runs),
        generation_table(runs),
    ]
    for part in parts:
        result.tables += part.tables
        result.skipped |= part.skipped
    return result
