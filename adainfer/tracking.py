"""MLflow bookkeeping: one run per job, params up front, metrics and artifacts at the end.

The tracking store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory,
browsable with ``mlflow ui``); ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri=`` override it.
A run that fails is closed as FAILED by MLflow's context manager, never left RUNNING.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from adainfer.errors import AdaInferError


@contextmanager
def tracked_run(
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict | None = None,
    tracking_uri: str | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run (closed FINISHED on success, FAILED on an exception) with its params."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as err:  # noqa: BLE001 - any store failure is the same user problem
        raise AdaInferError(
            f"cannot open the MLflow tracking store {mlflow.get_tracking_uri()!r}: {err}",
            "check MLFLOW_TRACKING_URI / mlflow.tracking_uri (a server must be running)",
        ) from None
    with mlflow.start_run(run_name=run_name, tags=tags, nested=nested) as run:
        mlflow.log_params(params)
        yield run


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_folder(folder: Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(folder), artifact_path)


def log_layer_curve(key: str, values) -> None:
    """One metric per layer, with the layer number (from 1) as its step."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
    MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=metrics)


def log_tables(tables: dict[str, pd.DataFrame], config_yaml: str) -> None:
    """The resolved config and data tables (Parquet) as run artifacts."""
    mlflow.log_text(config_yaml, "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in tables.items():
            path = Path(tmp) / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            mlflow.log_artifact(str(path))


def _policy_folder(run_id: str, tracking_uri: str | None) -> Path:
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="policy")
    except Exception as err:  # noqa: BLE001 - unknown run, no artifact, store unreachable
        raise AdaInferError(
            f"cannot fetch the policy of MLflow run {run_id!r}: {err}",
            "pass the id of a finished adainfer run (see `mlflow ui` or scripts/show_runs.py)",
        ) from None
    return Path(folder)


def load_run_policy(run_id: str, tracking_uri: str | None = None):
    """The fitted exit policy a run saved (its ``policy/`` artifact), ready to use."""
    from adainfer.policies import load_policy

    return load_policy(_policy_folder(run_id, tracking_uri))


def load_run_probe(run_id: str, tracking_uri: str | None = None):
    """The probe the run's policy reads layers through: its tuned lens, or the logit lens."""
    from adainfer.probes import load_probe

    return load_probe(_policy_folder(run_id, tracking_uri))
