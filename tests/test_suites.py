"""Suites averaged like the paper's "Avg" columns; prompts that overflow the context."""

from __future__ import annotations

import mlflow
import pytest
from conftest import compose_cfg

from adainfer.errors import AdaInferError
from adainfer.llm.encoding import check_label_tokens, encode_prompts
from adainfer.run import job as pipeline
from adainfer.tasks import Example, RuleTask, build_prompts


def test_suite_logs_each_task_and_the_average(tracking_uri):
    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "task=synthetic_rules",
            "classifier=gap",
            "shots=2",
            "task.tasks.next.n_test=10",
            "task.tasks.prev.n_test=6",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=suite",
        ]
    )
    summary = pipeline.run(cfg)
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["suite"])
    assert len(runs) == 3 and set(runs.status) == {"FINISHED"}
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id]
    assert set(children["params.task"]) == {"synthetic_next_item", "synthetic_prev_item"}
    assert sorted(children["params.n_test"].astype(int)) == [6, 10]
    for key in ("acc", "acc_full", "flops_ratio", "exit_layer_mean"):
        assert parent[f"metrics.{key}"] == pytest.approx(children[f"metrics.{key}"].mean())
        assert summary[key] == pytest.approx(parent[f"metrics.{key}"])
        for _, child in children.iterrows():
            per_task = parent[f"metrics.{child['params.task']}/{key}"]
            assert per_task == pytest.approx(child[f"metrics.{key}"])


def test_overflowing_prompts_drop_demonstrations(tiny_llama):
    task = RuleTask(n_train=30, n_test=12)
    splits = task.load()
    prompts = build_prompts(splits.test, splits.train, 5, seed=0)
    full = encode_prompts(tiny_llama.tokenizer, prompts, 4096)
    assert full.truncated == 0 and full.dropped_demos == 0
    limit = int(full.seq_len.min()) - 1  # every 5-shot prompt is too long now
    fitted = encode_prompts(tiny_llama.tokenizer, prompts, limit)
    assert fitted.truncated == len(prompts)
    assert fitted.dropped_demos >= len(prompts)
    assert fitted.seq_len.max() <= limit
    # Demonstrations go, the query and its gold token stay.
    assert (fitted.gold == full.gold).all()
    for ids, prompt in zip(fitted.input_ids, prompts, strict=True):
        assert tiny_llama.tokenizer.decode(ids).endswith(f"Q: {prompt.query.input}\nA:")


def test_query_alone_too_long_is_a_clear_error(tiny_llama):
    prompts = build_prompts([Example("a " * 50, "b")], [], 0, seed=0)
    with pytest.raises(AdaInferError, match="alone is .* tokens, longer than the context of 10"):
        encode_prompts(tiny_llama.tokenizer, prompts, 10)


def test_overflow_is_logged(tracking_uri):
    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "classifier=never",
            "shots=5",
            "context_length=30",
            "task.n_train=20",
            "task.n_test=5",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=overflow",
        ]
    )
    metrics = pipeline.run(cfg)
    assert metrics["prompts_truncated"] == 25  # every prompt of both splits
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["overflow"]).iloc[0]
    assert run["metrics.prompts_truncated"] == 25 and run["metrics.demos_dropped"] > 25


def test_label_words_sharing_a_first_token_are_refused(tiny_llama):
    check_label_tokens(tiny_llama.tokenizer, ["World", "Sports", "Business", "Sci/Tech"], "ok")
    with pytest.raises(AdaInferError, match=r"\['World', 'World War'\] all start with ' World'"):
        check_label_tokens(tiny_llama.tokenizer, ["World", "Sports", "World War"], "bad")
