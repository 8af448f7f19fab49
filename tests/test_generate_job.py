"""``task.generate=true``: a job that also generates its test answers, scored as text, on the
tiny Llama and a real MLflow store; refused settings open no run."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from conftest import compose_cfg

from adainfer.compose.inputs import load_inputs
from adainfer.compose.settings import check_settings
from adainfer.decide.policies import GapThreshold, NeverExit
from adainfer.decide.records import LayerRecords
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

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
    assert metrics["gen_flops_ratio"] == metrics["gen_flops_ratio_with_prefill"] == 1.0
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
    from adainfer.decide.policies import NeverExit
    from adainfer.engine import EarlyExitEngine, generate
    from adainfer.run.generation import generation_metrics
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


# -- risk control of whole answers (risk.answers) -----------------------------------------------
def _gap_train(scale: float, n: int = 40, layers: int = 4) -> LayerRecords:
    """Train records whose gaps spread over [0, scale]: the candidate thresholds are their
    quantiles (fixed before any calibration answer is generated)."""
    rng = np.random.default_rng(0)
    values = {k: scale * rng.random((n, layers)).astype(np.float32) for k in ("gap", "top_prob")}
    argmax = rng.integers(0, 3, (n, layers))
    return LayerRecords(values, argmax, argmax[:, -1].copy(), np.full(n, 10))


def _antonyms(loaded, data_dir, n: int):
    from adainfer.tasks.base import Example

    rows = [
        json.loads(line)
        for line in (data_dir / "function_vectors" / "abstractive" / "antonym.jsonl").open()
    ]
    examples = [Example(f"Q: {r['input']}\nA:", r["output"]) for r in rows[:n]]
    return [loaded.tokenizer(e.input).input_ids for e in examples], examples


@pytest.mark.parametrize("answers", ["equal", "metric"])
def test_answers_are_certified_at_the_threshold_where_the_walk_stops(tiny_llama, data_dir, answers):
    """The certified threshold's answers, generated again, lose what was logged; the next
    candidate (the first more aggressive one) fails its test, so the walk stopped there; the
    full model's answers lose nothing. ε is loose so that some candidates pass; the train gaps
    span twice a gap at which this model's tokens exit at several depths."""
    from test_generate import mid_gap

    from adainfer.decide.risk import RiskLimit, risk_p_value
    from adainfer.engine import EarlyExitEngine, generate
    from adainfer.run.generation import STOP, answer_candidates, answer_losses, calibrate_answers
    from adainfer.tasks.base import Example

    ids, examples = _antonyms(tiny_llama, data_dir, 24)
    train = _gap_train(2 * mid_gap(tiny_llama, ids[:6], 5))
    full = generate(EarlyExitEngine(tiny_llama, NeverExit()), ids, 5, STOP, "propagate", 8).text
    if answers == "metric":  # a random model knows no antonym: golds it gets right, or not
        examples = [
            Example(e.input, a if i % 3 else "zzz")
            for i, (e, a) in enumerate(zip(examples, full, strict=True))
        ]
    limit = RiskLimit(0.3, 0.2, bound="wsr", loss="drop" if answers == "metric" else "flip")
    policy = GapThreshold(threshold=0.0)
    settings = (5, "propagate", 8, False)
    cal = calibrate_answers(
        tiny_llama, policy, None, train, ids, examples, limit, answers, 8, settings
    )
    candidates = answer_candidates(policy, train, limit.grid, 8)
    assert len(candidates) == 8 and (np.diff(candidates) < 0).all()

    def at(threshold: float) -> np.ndarray:
        engine = EarlyExitEngine(tiny_llama, GapThreshold(threshold=threshold))
        early = generate(engine, ids, 5, STOP, "propagate", 8).text
        full = generate(EarlyExitEngine(tiny_llama, NeverExit()), ids, 5, STOP, "propagate", 8)
        return answer_losses(early, full.text, examples, answers, limit.loss, False)

    assert cal.n == 24 and policy.threshold == cal.threshold
    assert cal.tested == int(np.sum(candidates >= cal.threshold))
    if cal.certified:
        assert at(cal.threshold).sum() == cal.losses and cal.p_value <= limit.delta
    assert cal.tested < len(candidates), "a loss-free last candidate: nothing to stop at"
    following = candidates[cal.tested]
    assert risk_p_value(at(following), limit) > limit.delta
    assert at(np.inf).sum() == 0


def test_nothing_certified_on_answers_generates_the_full_models(tracking_uri, data_dir):
    """Twelve calibration answers cannot certify a 1% share of changed answers: the policy
    (a gap threshold of 0, which stops at the first layer) never exits, so every generated
    answer is the full model's, and the run says so."""
    cfg = compose_cfg(
        [*GEN, "task=function_vectors", "task.name=antonym", "shots=3", "task.n_test=8"]
        + [f"task.data_dir={data_dir}", "classifier=gap", "classifier.threshold=0.0"]
        + ["task.n_calibration=12", "risk.epsilon=0.01", "risk.answers=equal"]
        + _uri(tracking_uri, "gen_answers")
    )
    metrics = pipeline.run(cfg)
    assert metrics["gen_risk_certified"] == 0.0 and metrics["gen_risk_n"] == 12
    assert "gen_risk_threshold" not in metrics  # +inf: not logged
    assert metrics["gen_equal_full"] == 1.0 and metrics["gen_exit_layer_mean"] == 4.0
    run = _runs(tracking_uri, "gen_answers").iloc[0]
    assert run.status == "FINISHED" and run["metrics.gen_risk_certified"] == 0.0


def test_answer_risk_settings_are_checked():
    problems = "\n".join(check_settings(compose_cfg(["task=sst2", "risk.answers=equal"])))
    assert "risk.answers=equal bounds generated answers, and the task generates none" in problems
    problems = "\n".join(check_settings(compose_cfg([*GEN, "task=squad", "risk.answers=equal"])))
    assert "risk.answers=equal without risk.epsilon" in problems
    cfg = compose_cfg([*GEN, "task=squad", "risk.answers=all", "risk.answer_grid=0"])
    problems = "\n".join(check_settings(cfg))
    assert "unknown answers risk.answers='all'" in problems
    assert "risk.answer_grid=0 is not a whole number >= 1" in problems
