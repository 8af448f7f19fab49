"""The MLflow experiment adainfer opens: its kind, so the MLflow 3 UI shows the runs table."""

from __future__ import annotations

import mlflow
from conftest import compose_cfg

from adainfer.run import job as pipeline
from adainfer.run import tracking


def test_a_run_leaves_its_experiment_marked_as_model_training(tracking_uri):
    small = ["model=tiny_llama", "shots=2", "task.n_train=12", "task.n_test=8", "classifier=gap"]
    pipeline.run(
        compose_cfg([*small, f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=kind"])
    )
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("kind")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(mlflow.search_runs([experiment.experiment_id])) == 1


def test_a_kind_set_by_hand_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("own", tags={"mlflow.experimentKind": "finetuning"})
    assert tracking.open_store(uri, "own") == experiment_id
    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "finetuning"
