"""Read a sweep back from MLflow as one tidy DataFrame: a row per finished per-task run.

Runs are chosen by experiment, optionally narrowed by tags (``sweep_dir=...``) or by a suite's
parent run. Only FINISHED runs count. A suite's parent run only repeats its children's numbers
(as ``<task>/<metric>`` and averages), so parents are dropped and their nested runs kept as
ordinary per-task runs. Report runs (tag ``adainfer_report=1``) are never inputs, so a report
never feeds the next one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from adainfer.errors import AdaInferError

REPORT_TAG = "adainfer_report"
PARENT_TAG = "mlflow.parentRunId"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
COLUMNS = (
    "run_id",
    "run_name",
    "start_time",
    "parent_run_id",
    "suite",
    "suite_tasks",
    "sweep_dir",
    "report",
    "model",
    "task",
    "shots",
    "classifier",
    "feature_set",
    "seed",
    "num_layers",
    "fit_tasks",
    "fit_model",
    "fit_include_own",
    "probe",
    "gen_kv_fill",
)
# What ``task.generate=true`` logs (adainfer.run.generation), in the generation table's order;
# a run that generated nothing has none of them. ``_full``: the full model; without: early exit.
GEN_METRICS = (
    "gen_em_full",
    "gen_em",
    "gen_f1_full",
    "gen_f1",
    "gen_equal_full",
    "gen_exit_layer_mean",
    "gen_flops_ratio",
    "gen_flops_ratio_with_prefill",
    "gen_tokens_per_s_full",
    "gen_tokens_per_s",
    "gen_risk_certified",
)
METRICS = (
    "acc_full",
    "acc",
    "exit_layer_mean",
    "exit_layer_var",
    "flops_ratio",
    "oracle_consistent_acc",
    "oracle_consistent_flops_ratio",
    "oracle_gold_acc",
    "oracle_gold_flops_ratio",
    "prompts_truncated",
    "demos_dropped",
    *GEN_METRICS,
)
# The paper's task groups; every other task (Function Vectors, generated rules) is "rules".
GROUPS: dict[str, tuple[str, ...]] = {
    "qa": ("mmlu", "commonsense_qa", "squad"),
    "classification": ("sst2", "ag_news"),
}
GROUP_ORDER = ("qa", "classification", "rules")
# The generalization study's fit settings (Table 6), in the paper's order.
FIT_SETTINGS = ("intra", "inter-task", "multi-task", "inter-model", "inter-task+model")


def task_group(task: str) -> str:
    """The paper's group of a task: qa, classification, or rules (everything else)."""
    return next((group for group, tasks in GROUPS.items() if task in tasks), "rules")


def task_order(task: str) -> tuple[int, int, str]:
    """Sort key putting tasks in the paper's column order (groups, then members)."""
    group = task_group(task)
    members = GROUPS.get(group, ())
    return GROUP_ORDER.index(group), members.index(task) if task in members else 0, task


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An MLflow client for ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI`` / MLflow's)."""
    return MlflowClient(tracking_uri)


def experiment_id(client: MlflowClient, experiment: str) -> str:
    """The id of the named experiment, or an error listing the experiments that exist."""
    try:
        found = client.get_experiment_by_name(experiment)
        names = [] if found else [e.name for e in client.search_experiments()]
    except Exception as err:  # noqa: BLE001 - unreachable or broken store: one user problem
        raise AdaInferError(
            f"cannot read the MLflow tracking store {client.tracking_uri!r}: {err}",
            "pass --tracking-uri (or set MLFLOW_TRACKING_URI) to the store the sweep wrote to",
        ) from None
    if found is None:
        raise AdaInferError(
            f"no experiment {experiment!r} in {client.tracking_uri}",
            f"pass --experiment with one of {sorted(names)} (or point --tracking-uri elsewhere)",
        )
    return found.experiment_id


def _search(client: MlflowClient, exp_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string, max_results=1000, order_by=["start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def _row(run: Run) -> dict[str, Any]:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    model = params.get("model")
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "start_time": run.info.start_time,
        "parent_run_id": tags.get(PARENT_TAG),
        "suite": params.get("suite"),
        "suite_tasks": params.get("suite_tasks"),
        "sweep_dir": tags.get("sweep_dir"),
        "report": tags.get(REPORT_TAG),
        "model": model,
        "task": params.get("task"),
        "shots": params.get("shots"),
        "classifier": params.get("classifier"),
        "feature_set": params.get("feature_set", "base"),
        "seed": params.get("seed"),
        "num_layers": params.get("num_layers"),
        "fit_tasks": params.get("fit_tasks", "own"),
        "fit_model": params.get("fit_model", model),
        "fit_include_own": params.get("fit_include_own"),
        "probe": params.get("probe"),
        "gen_kv_fill": tags.get("gen_kv_fill"),
    }
    return row | {m: metrics.get(m) for m in METRICS}


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per download: a report downloads dozens of small files."""
    old = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = old


def _include_own(client: MlflowClient, row: Any) -> bool:
    """Whether a run with other fit tasks also trained on its own (multi-task, Table 6)."""
    if "own" in str(row.fit_tasks).split(","):
        return True
    if row.fit_include_own is not None:
        return str(row.fit_include_own).lower() == "true"
    # Older runs log no param for fit.include_own: read it from the resolved config.
    try:
        with quiet_downloads():
            path = client.download_artifacts(row.run_id, "config.yaml")
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except Exception:  # noqa: BLE001 - no config artifact: treat it as plain inter-task
        return False
    return bool((config.get("fit") or {}).get("include_own"))


def fit_setting(client: MlflowClient, row: Any) -> str:
    """intra / inter-task / multi-task / inter-model: where the exit classifier was fitted."""
    other_tasks = [t for t in str(row.fit_tasks).split(",") if t and t != "own"]
    other_model = row.fit_model not in (None, row.model)
    if other_tasks:
        setting = "multi-task" if _include_own(client, row) else "inter-task"
        return "inter-task+model" if other_model else setting
    return "inter-model" if other_model else "intra"


def load_runs(
    experiment: str,
    tags: dict[str, str] | None = None,
    parent: str | None = None,
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """Finished per-task AdaInfer runs of ``experiment`` as a DataFrame, one row per run.

    ``tags`` keeps runs carrying all of them (e.g. ``{"sweep_dir": ...}``); ``parent`` keeps the
    nested runs of that suite run. Columns: ids, the params (``shots`` as int), the tag
    ``gen_kv_fill``, the scalar metrics (``gen_*`` empty where a run generated nothing),
    ``group`` (qa / classification / rules) and ``fit_setting``.
    """
    client = client_for(tracking_uri)
    exp_id = experiment_id(client, experiment)
    clauses = ["attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{key}` = {_quote(value)}" for key, value in (tags or {}).items()]
    if parent:
        clauses.append(f"tags.`{PARENT_TAG}` = {_quote(parent)}")
    found = _search(client, exp_id, " and ".join(clauses))
    frame = pd.DataFrame([_row(run) for run in found], columns=[*COLUMNS, *METRICS])
    keep = frame.report.isna() & frame.suite_tasks.isna() & frame.model.notna()
    keep &= frame.task.notna() & frame.shots.notna() & frame.acc.notna()
    frame = frame[keep].reset_index(drop=True)
    if frame.empty:
        selection = ", ".join(clauses[1:]) or "no tag or parent filter"
        raise AdaInferError(
            f"no finished AdaInfer runs in experiment {experiment!r} ({selection}) "
            f"at {client.tracking_uri}",
            "check --experiment / --tag / --parent against `mlflow ui`, or run a sweep first",
        )
    frame["shots"] = frame.shots.astype(int)
    frame["group"] = frame.task.map(task_group)
    frame["fit_setting"] = [fit_setting(client, row) for row in frame.itertuples()]
    return frame.drop(columns=["report", "suite_tasks", "fit_include_own"])


def parse_tags(pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` from the command line as a dict, or an error naming the bad one."""
    tags = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AdaInferError(f"bad --tag {pair!r}", "write it as key=value, e.g. sweep_dir=...")
        tags[key] = value
    return tags
