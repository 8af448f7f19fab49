"""``task.generate=true``: a job that also generates its test answers, scored as text, on the
tiny Llama and a real MLflow store; refused settings open no run."""

from __future__ import annotations

import json

import mlflow
import pytest
from conftest import compose_cfg

from adainfer import pipeline
from adainfer.errors import AdaInferError
from adainfer.job import load_inputs
from adainfer.settings import check_settings

GEN = ["model=tiny_llama", "task.generate=true", "task.max_new_tokens=6", "task.n_train=12"]


def _uri(tracking_uri: str, experiment: str) -> list[str]:
    return [f"mlflow.tracking_uri={tracking_uri}", f"mlflow.experiment={experiment}"]


def _runs(tracking_uri: str, experiment: str):
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment])


def test_never_generates_the_full_models_answers(tracking_uri, data_dir):
    cfg = compose_cfg(
        [*GEN, "task=squad", "shots=1", "task.n_test=6", f"task.data_dir={data_dir}"]
        + ["classifier=never", *_uri(tracking_uri, "gen_never")]
    )
    assert cfg.model.num_layers == 4 and cfg.task.generate is True
    metrics = pipeline.run(cfg)
    assert metrics["gen_equal_full"] == 1.0
    assert metrics["gen_em"] == metrics["gen_em_full"]
    assert metrics["gen_f1"] == metrics["gen_f1_full"]
    assert metrics["gen_exit_layer_mean"] == 4.0  # every token after the first at full depth
    assert metrics["gen_tokens_per_s"] > 0 and metrics["gen_tokens_per_s_full"] > 0
    run = _runs(tracking_uri, "gen_never").iloc[0]
    assert run.status == "FINISHED"
    for key in ("gen_em", "gen_em_full", "gen_f1", "gen_f1_full", "gen_equal_full"):
        assert run[f"metrics.{key}"] == pytest.approx(metrics[key])
    client = mlflow.MlflowClient(tracking_uri)
    path = client.download_artifacts(run.run_id, "generations.jsonl")
    with open(path) as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 6
    assert all(r["full"] == r["early_exit"] and "\n" not in r["full"] for r in rows)
    assert all(r["gold"] and all(isinstance(g, str) for g in r["gold"]) for r in rows)


def test_a_policy_that_exits_generates_and_is_scored(tracking_uri, data_dir):
    """Function Vectors (exact match only) under a gap threshold that exits early."""
    cfg = compose_cfg(
        [*GEN, "task=function_vectors", "task.name=antonym", "shots=3", "task.n_test=8"]
        + [f"task.data_dir={data_dir}", "classifier=gap", "classifier.threshold=0.0"]
        + _uri(tracking_uri, "gen_gap")
    )
    metrics = pipeline.run(cfg)
    assert "gen_f1" not in metrics and "gen_f1_full" not in metrics
    assert 0.0 <= metrics["gen_em"] <= 1.0 and 0.0 <= metrics["gen_equal_full"] <= 1.0
    assert 1.0 <= metrics["gen_exit_layer_mean"] < 4.0  # a gap >= 0 stops at the first layer


def test_refused_before_any_run_opens(tracking_uri, data_dir):
    base = [*GEN, "task=squad", "shots=1", "task.n_test=4", f"task.data_dir={data_dir}"]
    uri = _uri(tracking_uri, "gen_refused")
    with pytest.raises(AdaInferError, match="'crf' cannot run in the early-exit engine"):
        pipeline.run(compose_cfg([*base, *uri, "classifier=crf"]))
    with pytest.raises(AdaInferError, match="'oracle_gold' cannot run in the early-exit engine"):
        pipeline.run(compose_cfg([*base, *uri, "classifier=oracle_gold"]))
    with pytest.raises(AdaInferError, match="whose answers are the labels"):
        load_inputs(compose_cfg([*GEN, "task=sst2", "classifier=never", *uri]))
    with pytest.raises(AdaInferError, match="more than the model's context"):
        pipeline.run(compose_cfg([*base, *uri, "classifier=never", "task.max_new_tokens=100000"]))
    mlflow.set_tracking_uri(tracking_uri)
    assert (
        mlflow.get_experiment_by_name("gen_refused") is None
        or _runs(tracking_uri, "gen_refused").empty
    )


def test_generation_settings_are_checked():
    cfg = compose_cfg([*GEN, "task=squad", "task.max_new_tokens=0", "kv_fill=copy"])
    problems = "\n".join(check_settings(cfg))
    assert "task.max_new_tokens=0 is not a whole number of tokens >= 1" in problems
    assert "unknown kv_fill kv_fill='copy'" in problems
    cfg = compose_cfg([*GEN, "task=squad", "stage=decide"])
    assert any("stage=decide with task.generate=true" in p for p in check_settings(cfg))


def test_scores_compare_the_generated_text_with_every_gold(tiny_llama):
    """Golds built from the full model's own answers: half of them match (written as SQuAD
    normalization equates), so both runs of ``never`` score exactly one half."""
    from adainfer.engine import EarlyExitEngine, generate
    from adainfer.generate_job import generation_metrics
    from adainfer.policies import NeverExit
    from adainfer.tasks.base import Example

    tok = tiny_llama.tokenizer
    texts = ["Q: capital of France\nA:", "Q: two plus two\nA:", "Q: a colour\nA:", "Q: hi\nA:"]
    ids = [tok(t)["input_ids"] for t in texts]
    full = generate(EarlyExitEngine(tiny_llama, NeverExit()), ids, 5, stop=["\n"]).text
    squad = [
        Example(t, "zzz", ("zzz", f"The {a}!") if i % 2 == 0 else ("zzz", "qqq"))
        for i, (t, a) in enumerate(zip(texts, full, strict=True))
    ]
    args = (tiny_llama, NeverExit(), None, ids)
    metrics, sample = generation_metrics(*args, squad, 5, "propagate", 2, squad=True)
    assert metrics["gen_em_full"] == metrics["gen_em"] == 0.5
    assert metrics["gen_equal_full"] == 1.0
    assert [r["full"] for r in sample] == full
    exact = [
        Example(t, a if i < 3 else f"{a}!")
        for i, (t, a) in enumerate(zip(texts, full, strict=True))
    ]
    metrics, _ = generation_metrics(*args, exact, 5, "recompute", 3, squad=False)
    assert metrics["gen_em_full"] == metrics["gen_em"] == 0.75
    assert "gen_f1" not in metrics
