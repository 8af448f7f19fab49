"""Risk-controlled thresholds: the guarantee holds over many calibration draws; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_cfg

from adainfer import pipeline
from adainfer.errors import AdaInferError
from adainfer.evaluate import apply_exits
from adainfer.features import LayerRecords
from adainfer.policies import GapThreshold
from adainfer.risk import RiskLimit, calibrate, min_calibration_size, p_value, upper_bound


def population(n: int, layers: int = 12, seed: int = 0) -> LayerRecords:
    """Instances whose answer settles at a random layer; the gap rises as it settles, noisily,
    so a gap threshold trades accuracy for depth and has a true risk curve to control."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(1, layers + 1, size=n)
    right = rng.random(n) < 0.7  # the full model's accuracy
    gold = np.full(n, 7)
    layer = np.arange(1, layers + 1)
    settled = layer[None, :] >= settle[:, None]
    argmax = np.where(settled & right[:, None], 7, rng.integers(100, 200, size=(n, layers)))
    gap = np.clip(0.3 * settled + 0.6 * rng.random((n, layers)), 0, 1).astype(np.float32)
    return LayerRecords({"gap": gap, "top_prob": gap}, argmax, gold, np.full(n, 20, dtype=np.int64))


def drop(records: LayerRecords, policy) -> float:
    result = apply_exits(records, policy.exit_layers(records))
    full = np.mean(result.full_prediction == records.gold)
    return float(full - np.mean(result.prediction == records.gold))


def test_binomial_bound_in_closed_form():
    assert p_value(0, 300, 0.01) == pytest.approx(0.99**300)
    assert min_calibration_size(0.01, 0.1) == 230
    assert p_value(0, 230, 0.01) <= 0.1 < p_value(0, 229, 0.01)
    assert upper_bound(0, 230, 0.1) == pytest.approx(1 - 0.1 ** (1 / 230))


def test_the_guarantee_holds_over_calibration_draws():
    """P(test drop > ε) ≤ δ: draw many calibration sets from one population and score each
    chosen threshold on a large independent sample (its true drop, up to noise)."""
    limit = RiskLimit(epsilon=0.05, delta=0.2, grid=40)
    pool, truth = population(20_000, seed=1), population(50_000, seed=2)
    train = population(500, seed=3)
    rng = np.random.default_rng(0)
    violations, certified, drops = 0, 0, []
    for _ in range(60):
        pick = rng.choice(pool.num_instances, size=400, replace=False)
        cal = pool.take(pick)
        policy = GapThreshold()
        chosen = calibrate(policy, train, cal, limit)
        certified += chosen.certified
        drops.append(drop(truth, policy))
        violations += drops[-1] > limit.epsilon
    assert certified > 50  # it does exit: the test is not passed by never exiting
    assert np.mean(drops) > 0.3 * limit.epsilon  # and it spends part of the budget
    assert violations / 60 <= limit.delta


def test_an_uncalibrated_gap_rule_breaks_the_limit():
    """The same population with the paper's fixed threshold: the control is what keeps it."""
    assert drop(population(50_000, seed=2), GapThreshold(threshold=0.3)) > 0.05


def test_too_few_calibration_instances_certify_nothing():
    policy = GapThreshold()
    chosen = calibrate(policy, population(500), population(100, seed=4), RiskLimit(0.01))
    assert not chosen.certified and policy.threshold == np.inf and policy.never_stops()
    assert chosen.cal_drop == 0.0
    # MLflow would clamp +inf to 1.8e308: nothing certified logs no threshold at all
    assert "risk_threshold" not in chosen.metrics() and chosen.metrics()["risk_certified"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["risk.epsilon=0.01"], "needs a calibration split"),
        (["risk.epsilon=2"], "not a fraction"),
        (["task.n_train=null", "task.n_calibration=10"], "set task.n_train too"),
        (["task.n_train=1000", "task.n_calibration=10"], "none are left for calibration"),
        (["probe.name=nope"], "unknown probe"),
        (["probe.first_layer=0"], "probe.first_layer=0"),
        (["classifier=crf", "risk.epsilon=0.01"], "a Viterbi CRF has none"),
    ],
)
def test_bad_risk_settings_fail_before_any_run(overrides, message, tracking_uri):
    import mlflow

    cfg = compose_cfg(
        ["model=tiny_llama", f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=badrisk"]
        + overrides
    )
    with pytest.raises(AdaInferError, match=message):
        pipeline.run(cfg)
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(experiment_names=["badrisk"]).empty


def test_pipeline_logs_the_calibration(tracking_uri, tmp_path):
    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "classifier=gap",
            "task.n_train=12",
            "task.n_calibration=10",
            "risk.epsilon=0.05",
            "risk.resplits=3",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=risk",
            f"traces.dir={tmp_path}",
        ]
    )
    metrics = pipeline.run(cfg)
    assert metrics["risk_n"] == 10
    assert metrics["risk_certified"] == 0.0  # 10 instances cannot certify 5 points at δ=0.1
    assert metrics["acc_drop"] == 0.0 and metrics["exit_layer_mean"] == 4
    assert metrics["risk_resplits"] == 3 and metrics["risk_resplit_certified_rate"] == 0.0
