"""The report on a real sweep: its tables hold the runs' own logged numbers, nothing else.

One small sweep (run.py -m in a subprocess on the tiny models: three classifiers x two feature
sets x two models), one suite run (synthetic_rules) and one inter-task generalization run (both
through the pipeline in-process, to save a start-up each) are shared by the module; the logged
metrics are read back independently with mlflow.search_runs. The tiny random models are
right nowhere (every accuracy is 0), so a few hand-logged runs with distinct numbers for the
QA and classification tasks pin which metric lands in which column, and a FAILED one must stay
out. The generation table has a store of its own: one job that generates its SQuAD answers and
one that does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import REPO, compose_cfg, paper

from adainfer.errors import AdaInferError
from adainfer.report import build_report, build_tables, load_runs
from adainfer.report.cli import main as report_main
from adainfer.report.runs import GEN_METRICS
from adainfer.report.tables import GEN_KEYS, generation_table
from adainfer.run import job as pipeline

EXPERIMENT = "sweep"
SMALL = ["task.n_train=16", "task.n_test=8"]
SMALL_SIZES = (("train", 16), ("test", 8))
FIGURES = ("acc_per_layer", "features_per_layer", "exit_layers", "tradeoff")


def run_py(args: list[str], root: Path, uri: str) -> subprocess.CompletedProcess:
    """run.py as a user runs it, on the tiny models, tracked in ``uri``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        str(REPO / "run.py"),
        *paper(args),
        f"mlflow.experiment={EXPERIMENT}",
        f"traces.dir={root / 'traces'}",
        f"hydra.sweep.dir={root / 'multirun'}",
        f"hydra.run.dir={root / 'outputs'}",
    ]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_in_process(overrides: list[str], root: Path, uri: str) -> None:
    """One job on tiny_llama through the pipeline, composed from conf/ as run.py would."""
    pipeline.run(
        compose_cfg(
            [
                "model=tiny_llama",
                *overrides,
                f"mlflow.tracking_uri={uri}",
                f"mlflow.experiment={EXPERIMENT}",
                f"traces.dir={root / 'traces'}",
            ]
        )
    )


# task -> (acc_full, acc, flops_ratio), all distinct so that a swapped column cannot pass
HANDMADE = {
    "mmlu": (0.625, 0.5, 0.75),
    "commonsense_qa": (0.375, 0.25, 0.875),
    "sst2": (0.9, 0.8, 0.6),
}


def log_handmade(uri: str) -> None:
    """Runs shaped like the pipeline's (params and scalar metrics only), one per task."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    rows = [(task, values, "FINISHED") for task, values in HANDMADE.items()]
    for task, (full, acc, flops), status in [*rows, ("squad", (0.1, 0.1, 0.1), "FAILED")]:
        run_id = client.create_run(experiment, run_name=f"handmade/{task}").info.run_id
        params = {"model": "handmade", "task": task, "shots": 5, "classifier": "svm"}
        params |= {"feature_set": "base", "fit_tasks": "own", "fit_model": "handmade"}
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in {"acc_full": full, "acc": acc, "flops_ratio": flops}.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, status)


@dataclass
class Sweep:
    root: Path
    uri: str

    def logged(self) -> pd.DataFrame:
        """Finished per-task runs as MLflow itself reports them (no report code involved)."""
        mlflow.set_tracking_uri(self.uri)
        runs = mlflow.search_runs(
            experiment_names=[EXPERIMENT], filter_string="attributes.status = 'FINISHED'"
        )
        parents = runs.get("params.suite_tasks", pd.Series(index=runs.index)).notna()
        reports = runs.get("tags.adainfer_report", pd.Series(index=runs.index)).notna()
        return runs[~parents & ~reports]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_py(
        [
            "-m",
            "model=tiny_llama,tiny_opt",
            "classifier=crf,gap,oracle_consistent",
            "feature_set=base,attn",
            "shots=2",
            *SMALL,
        ],
        root,
        uri,
    )
    # The suite and the generalization run in-process (same pipeline, no second start-up).
    suite_sizes = [f"task.tasks.{m}.n_{s}={n}" for m in ("next", "prev") for s, n in SMALL_SIZES]
    run_in_process(["task=synthetic_rules", "shots=1", *suite_sizes], root, uri)
    run_in_process(
        [
            "classifier=crf",
            "shots=2",
            "+task@fit.tasks.prev=synthetic_prev_item",
            "fit.tasks.prev.n_train=16",
            *SMALL,
        ],
        root,
        uri,
    )
    log_handmade(uri)
    return Sweep(root, uri)


@pytest.fixture(scope="module")
def report(sweep):
    out = sweep.root / "report"
    report_main(["--experiment", EXPERIMENT, "--tracking-uri", sweep.uri, "--out", str(out)])
    return out


def _table(report: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report / f"{name}.csv")


def _cells(table: pd.DataFrame, across: str):
    """(row, value of ``across``, metric, cell) for every filled ``<value>/<metric>`` cell."""
    for _, row in table.iterrows():
        for column in table.columns:
            value, sep, metric = column.partition("/")
            if sep and value not in ("Avg", "full") and pd.notna(row[column]):
                yield row, {across: value}, metric, row[column]


def _logged_value(logged: pd.DataFrame, where: dict, metric: str) -> float:
    chosen = logged
    for key, value in where.items():
        chosen = chosen[chosen[f"params.{key}"] == str(value)]
    assert len(chosen) == 1, (where, len(chosen))
    return float(chosen[f"metrics.{metric}"].iloc[0])


KEYS = ("model", "shots", "classifier", "feature_set", "task")


def _check(table: pd.DataFrame, across: str, logged: pd.DataFrame) -> int:
    """Every filled cell equals the one run it names; returns how many cells were checked."""
    checked = 0
    for row, where, metric, cell in _cells(table, across):
        keys = {k: row[k] for k in KEYS if k in row.index} | where
        keys["fit_tasks"] = row["fit"] if "fit" in row.index else "own"
        assert cell == pytest.approx(_logged_value(logged, keys, metric), abs=1e-12), keys
        checked += 1
    return checked


def test_task_tables_hold_the_logged_metrics(sweep, report):
    logged = sweep.logged()
    own = logged[logged["params.fit_tasks"] == "own"]
    names = sorted(p.stem for p in report.glob("tasks_*.csv"))
    assert names == ["tasks_classification", "tasks_qa", "tasks_rules"]
    checked = sum(_check(_table(report, name), "task", logged) for name in names)
    assert checked == 3 * len(own)  # every finished run once: acc_full, acc, flops_ratio
    qa = _table(report, "tasks_qa")
    assert "squad/acc" not in qa  # the FAILED run
    assert qa[["mmlu/acc_full", "mmlu/acc", "mmlu/flops_ratio"]].values.tolist() == [
        list(HANDMADE["mmlu"])
    ]
    assert _table(report, "tasks_rules")["synthetic_next_item/flops_ratio"].nunique() > 1
    gap_crf = _table(report, "gap_vs_crf_rules")
    assert set(gap_crf.classifier) == {"gap", "crf"}
    expected = own["params.classifier"].isin(["gap", "crf"]).sum()
    assert _check(gap_crf, "task", logged) == 3 * expected
    assert not (report / "gap_vs_crf_qa.csv").exists()  # the QA runs used svm


def test_avg_columns_are_means_of_their_members(sweep, report):
    qa = _table(report, "tasks_qa").iloc[0]
    for i, metric in enumerate(("acc_full", "acc", "flops_ratio")):
        expected = (HANDMADE["mmlu"][i] + HANDMADE["commonsense_qa"][i]) / 2
        assert qa[f"Avg/{metric}"] == pytest.approx(expected)
    table = _table(report, "tasks_rules")
    tasks = ["synthetic_next_item", "synthetic_prev_item"]
    for metric in ("acc_full", "acc", "flops_ratio"):
        members = table[[f"{task}/{metric}" for task in tasks]].mean(axis=1)
        assert table[f"Avg/{metric}"].tolist() == pytest.approx(members.tolist())
    # The suite's row averages both tasks, exactly as its parent run logged it.
    mlflow.set_tracking_uri(sweep.uri)
    parent = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="params.suite_tasks != ''"
    ).iloc[0]
    row = table[table.shots == 1].iloc[0]
    assert row[[f"{t}/acc" for t in tasks]].notna().all()
    for metric in ("acc_full", "acc", "flops_ratio"):
        assert row[f"Avg/{metric}"] == pytest.approx(parent[f"metrics.{metric}"], abs=1e-12)


def test_classifier_generalization_and_factor_tables(sweep, report):
    logged = sweep.logged()
    own = logged[logged["params.fit_tasks"] == "own"]
    classifiers = _table(report, "classifiers")
    assert _check(classifiers, "classifier", logged) == 2 * len(own)
    assert list(classifiers.columns[4:7]) == ["full/acc", "svm/acc", "svm/flops_ratio"]
    for _, row in classifiers.iterrows():  # full/acc: the full model, whatever the classifier
        same = own
        for key in ("model", "shots", "task", "feature_set"):
            same = same[same[f"params.{key}"] == str(row[key])]
        assert same["metrics.acc_full"].nunique() == 1
        assert row["full/acc"] == pytest.approx(same["metrics.acc_full"].iloc[0])
    general = _table(report, "generalization")
    assert general[["fit_setting", "fit"]].values.tolist() == [
        ["intra", "own"],
        ["inter-task", "synthetic_prev_item"],
    ]
    assert _check(general, "task", logged) == 4
    factors = _table(report, "factors")
    assert set(factors.feature_set) == {"base", "attn"}
    assert _check(factors, "task", logged) == 2 * 12  # the 12 runs of the -m sweep


def test_figures_are_png_and_report_run_holds_everything(sweep, report):
    for kind in FIGURES:
        data = (report / f"{kind}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, kind
    client = mlflow.MlflowClient(sweep.uri)
    reports = sweep_reports(sweep)
    assert len(reports) >= 1
    run = client.get_run(reports.run_id.iloc[0])
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    written = {p.name for p in report.iterdir()}
    assert written == logged
    assert {"report.md", "tasks_rules.md", "tasks_rules.csv", "tradeoff.png"} <= logged


def sweep_reports(sweep: Sweep) -> pd.DataFrame:
    mlflow.set_tracking_uri(sweep.uri)
    return mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="tags.adainfer_report = '1'"
    )


def test_second_report_does_not_read_the_first(sweep, report):
    before = len(sweep_reports(sweep))
    again = build_report(EXPERIMENT, sweep.root / "again", tracking_uri=sweep.uri, figures=False)
    assert len(sweep_reports(sweep)) == before + 1
    assert again.run_id not in set(again.runs.run_id)
    assert len(again.runs) == len(sweep.logged())
    for name in again.tables.names:
        first = _table(report, name)
        pd.testing.assert_frame_equal(_table(sweep.root / "again", name), first)


def test_selection_by_tag_parent_and_bad_input(sweep, report, capsys):
    logged = sweep.logged()
    sweep_dir = logged["tags.sweep_dir"].dropna().iloc[0]
    by_tag = load_runs(EXPERIMENT, {"sweep_dir": sweep_dir}, tracking_uri=sweep.uri)
    assert set(by_tag.run_id) == set(logged[logged["tags.sweep_dir"] == sweep_dir].run_id)
    mlflow.set_tracking_uri(sweep.uri)
    parent = mlflow.search_runs(
        experiment_names=[EXPERIMENT], filter_string="params.suite_tasks != ''"
    ).run_id.iloc[0]
    children = load_runs(EXPERIMENT, parent=parent, tracking_uri=sweep.uri)
    assert sorted(children.task) == ["synthetic_next_item", "synthetic_prev_item"]
    with pytest.raises(AdaInferError, match="(?s)no experiment 'nope'.*sweep"):
        load_runs("nope", tracking_uri=sweep.uri)
    with pytest.raises(AdaInferError, match="no finished AdaInfer runs"):
        load_runs(EXPERIMENT, {"sweep_dir": "elsewhere"}, tracking_uri=sweep.uri)
    with pytest.raises(SystemExit) as exit_info:
        report_main(["--experiment", EXPERIMENT, "--tracking-uri", sweep.uri, "--tag", "oops"])
    assert exit_info.value.code == 2
    assert "bad --tag 'oops'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def generated(tmp_path_factory, data_dir) -> Sweep:
    """A store holding one SQuAD job that generates its answers and one that does not (both on
    tiny_llama, sharing their traces)."""
    root = tmp_path_factory.mktemp("generation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    squad = ["task=squad", "shots=1", "task.n_train=12", "task.n_test=6"]
    squad.append(f"task.data_dir={data_dir}")
    generate = ["task.generate=true", "task.max_new_tokens=6"]
    run_in_process([*squad, *generate, "classifier=gap", "classifier.threshold=0.0"], root, uri)
    run_in_process([*squad, "classifier=crf"], root, uri)
    return Sweep(root, uri)


def test_generation_table_holds_the_generating_runs_metrics(generated):
    logged = generated.logged()
    assert len(logged) == 2
    run = logged[logged["metrics.gen_em"].notna()]
    assert len(run) == 1 and run["params.classifier"].iloc[0] == "gap"
    run = run.iloc[0]
    runs = load_runs(EXPERIMENT, tracking_uri=generated.uri)
    tables = build_tables(runs)
    table = tables["generation"].frame
    assert len(table) == 1  # the job that did not generate is not in it
    row = table.iloc[0]
    keys = {key: run[f"params.{key}"] for key in GEN_KEYS if key != "gen_kv_fill"}
    keys["gen_kv_fill"] = run["tags.gen_kv_fill"]
    assert {key: str(row[key]) for key in GEN_KEYS} == keys
    present = [m for m in GEN_METRICS if pd.notna(run.get(f"metrics.{m}"))]
    assert {"gen_em_full", "gen_em", "gen_f1_full", "gen_f1", "gen_equal_full"} <= set(present)
    assert {"gen_exit_layer_mean", "gen_tokens_per_s_full", "gen_tokens_per_s"} <= set(present)
    assert list(table.columns) == [*GEN_KEYS, *present]
    for metric in present:
        assert row[metric] == pytest.approx(run[f"metrics.{metric}"], abs=1e-12), metric
    assert set(tables["tasks_qa"].frame.classifier) == {"gap", "crf"}  # both, as before


def test_generation_columns_leave_the_other_tables_alone(generated):
    """The other tables are the same with or without the generation columns in the runs."""
    runs = load_runs(EXPERIMENT, tracking_uri=generated.uri)
    tables = build_tables(runs)
    bare = build_tables(runs.drop(columns=[*GEN_METRICS, "probe", "gen_kv_fill"]))
    assert bare.names == [name for name in tables.names if name != "generation"]
    assert "generation" in bare.skipped
    for name in bare.names:
        assert bare[name].markdown() == tables[name].markdown()
        pd.testing.assert_frame_equal(bare[name].frame, tables[name].frame)
    assert "generation" in generation_table(runs[runs.gen_em.isna()]).skipped


def test_generation_table_shows_the_columns_its_runs_logged(generated):
    """F1 only where some run logged it (SQuAD); a later column such as gen_flops_ratio as
    soon as a run logs it, in GEN_METRICS' order."""
    runs = load_runs(EXPERIMENT, tracking_uri=generated.uri)
    changed = runs.assign(gen_f1=None, gen_f1_full=None)
    changed.loc[changed.gen_em.notna(), "gen_flops_ratio"] = 0.75
    table = generation_table(changed).tables[0].frame
    shown = [c for c in table.columns if c.startswith("gen_") and c != "gen_kv_fill"]
    assert "gen_f1" not in shown and "gen_f1_full" not in shown
    assert shown.index("gen_flops_ratio") == shown.index("gen_exit_layer_mean") + 1
    assert table.gen_flops_ratio.tolist() == [0.75]
