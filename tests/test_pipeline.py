"""The pipeline end to end: invariants on tiny models, seeds, and a real MLflow store."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_cfg

from adainfer.decide import stage
from adainfer.decide.policies import NeverExit, SVMPolicy
from adainfer.errors import AdaInferError
from adainfer.extract import extractor
from adainfer.run import job as pipeline
from adainfer.tasks import RuleTask


def _prepared(loaded, shots=3, seed=0):
    task = RuleTask(n_train=24, n_test=16)
    return extractor.prepare(task, task.load(), loaded, shots, seed)


def test_never_exit_reproduces_full_model(tiny_model):
    train, test = _prepared(tiny_model)
    outcome = extractor.evaluate(tiny_model, NeverExit(), train, test, batch_size=5)
    # Independent path: the library's own forward, one unpadded prompt at a time.
    expected = []
    for ids in test.input_ids:
        with torch.no_grad():
            logits = tiny_model.model(input_ids=torch.tensor([ids])).logits
        expected.append(int(logits[0, -1].argmax()))
    assert outcome.result.prediction.tolist() == expected
    assert outcome.metrics["acc"] == outcome.metrics["acc_full"]
    assert outcome.metrics["flops_ratio"] == pytest.approx(1.0)
    assert outcome.metrics["exit_layer_mean"] == tiny_model.num_layers


def test_batch_size_does_not_change_records(tiny_llama):
    train, test = _prepared(tiny_llama)
    one = extractor.evaluate(tiny_llama, SVMPolicy(), train, test, batch_size=1)
    many = extractor.evaluate(tiny_llama, SVMPolicy(), train, test, batch_size=7)
    assert np.array_equal(one.test.argmax, many.test.argmax)
    np.testing.assert_allclose(one.test.gap, many.test.gap, rtol=1e-4, atol=1e-5)


def _runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_same_seed_same_prompts_and_metrics(tiny_llama, tracking_uri):
    a_train, a_test = _prepared(tiny_llama, seed=7)
    b_train, b_test = _prepared(tiny_llama, seed=7)
    c_train, _ = _prepared(tiny_llama, seed=8)
    assert a_train.input_ids == b_train.input_ids and a_test.input_ids == b_test.input_ids
    assert a_train.input_ids != c_train.input_ids

    common = ["model=tiny_llama", "classifier=svm", "shots=3", "task.n_train=20", "task.n_test=12"]
    cfg = compose_cfg([*common, f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=seed"])
    first, second = pipeline.run(cfg), pipeline.run(cfg)
    assert first == second
    runs = _runs(tracking_uri, "seed")
    assert len(runs) == 2 and set(runs.status) == {"FINISHED"}
    for key, value in first.items():
        assert runs[f"metrics.{key}"].tolist() == pytest.approx([value, value])


@pytest.mark.slow
def test_default_job_logs_everything(tracking_uri, tmp_path):
    """The README's default job (embedded SmolLM2, generated task), shrunk to a few instances."""
    cfg = compose_cfg(
        [
            "task.n_train=16",
            "task.n_test=8",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=default",
        ]
    )
    assert cfg.model.name == "smollm2_135m"
    metrics = pipeline.run(cfg)
    run = _runs(tracking_uri, "default").iloc[0]
    assert run.status == "FINISHED"
    for key in ("acc_full", "acc", "exit_layer_mean", "exit_layer_var", "flops_ratio"):
        assert run[f"metrics.{key}"] == pytest.approx(metrics[key])
    assert 0.0 < metrics["flops_ratio"] <= 1.0
    assert 1 <= metrics["exit_layer_mean"] <= 30
    assert run["params.model"] == "smollm2_135m" and run["params.num_layers"] == "30"
    client = mlflow.MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "layer_features.parquet", "test_exits.parquet"} <= names
    table = pd.read_parquet(client.download_artifacts(run.run_id, "layer_features.parquet"))
    assert len(table) == (16 + 8) * 30
    layer_acc = client.get_metric_history(run.run_id, "acc_layer")
    assert [m.step for m in layer_acc] == list(range(1, 31))
    # The last layer's accuracy is the full model's accuracy.
    assert layer_acc[-1].value == pytest.approx(metrics["acc_full"])


def test_engine_mode_logs_online_exits(tracking_uri):
    common = ["model=tiny_llama", "shots=3", "task.n_train=20", "task.n_test=12", "engine=true"]
    uri = [f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=engine"]
    metrics = pipeline.run(compose_cfg([*common, *uri, "classifier=logreg"]))
    assert metrics["engine_trace_agreement"] == 1.0
    assert metrics["engine_acc"] == pytest.approx(metrics["acc"])
    assert metrics["engine_exit_layer_mean"] == pytest.approx(metrics["exit_layer_mean"])
    assert metrics["engine_seconds"] > 0 and metrics["engine_flops_ratio"] > 0
    with pytest.raises(AdaInferError, match="'crf' cannot run in the early-exit engine"):
        pipeline.run(compose_cfg([*common, *uri, "classifier=crf"]))
    runs = _runs(tracking_uri, "engine")
    assert len(runs) == 1  # the refused CRF job opened no run


def test_first_layer_is_logged_as_resolved(tiny_llama):
    from adainfer.decide.policies.base import earliest_settled

    train, test = _prepared(tiny_llama)
    records = extractor.evaluate(tiny_llama, NeverExit(), train, test, batch_size=8)
    auto = stage.score(SVMPolicy(), records.train, records.test, tiny_llama, first_layer="auto")
    assert auto.metrics["first_layer"] == earliest_settled(records.train)
    assert auto.metrics["first_layer"] == auto.policy.first_layer
    plain = stage.score(SVMPolicy(), records.train, records.test, tiny_llama)
    assert plain.metrics["first_layer"] == 1


def test_fewer_rows_than_asked_are_logged_and_warned(tiny_llama, tracking_uri, tmp_path, caplog):
    available = len(RuleTask().load().test)
    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "shots=1",
            "task.n_train=8",
            f"task.n_test={available + 100}",
            f"traces.dir={tmp_path}",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=requested",
        ]
    )
    with caplog.at_level("WARNING", logger="adainfer.tasks.base"):
        pipeline.run(cfg)
    assert f"task.n_test={available + 100} asks for more test instances than the " in caplog.text
    run = _runs(tracking_uri, "requested").iloc[0]
    assert run["params.n_test_requested"] == str(available + 100)
    assert run["params.n_test"] == str(available)
    assert run["params.n_train_requested"] == run["params.n_train"] == "8"
