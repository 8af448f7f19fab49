"""Risk-controlled thresholds: the guarantee holds over many calibration draws; bad input."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from conftest import compose_cfg
from test_cli import run_py

from adainfer.decide.bounds import binomial_p_value, hb_p_value, wsr_p_value
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import GapThreshold
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import (
    RiskLimit,
    calibrate,
    losses,
    min_calibration_size,
    p_value,
    resplit_check,
    risk_p_value,
    upper_bound,
)
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline


def population(n: int, layers: int = 12, seed: int = 0, overthink: float = 0.0) -> LayerRecords:
    """Instances whose answer settles at a random layer; the gap rises as it settles, noisily,
    so a gap threshold trades accuracy for depth and has a true risk curve to control.
    With ``overthink``, that share of the instances the full model gets right lose their right
    answer at the last layer: exiting before it *fixes* them (otherwise no exit ever does)."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(1, layers + 1, size=n)
    right = rng.random(n) < 0.7  # the full model's accuracy
    gold = np.full(n, 7)
    layer = np.arange(1, layers + 1)
    settled = layer[None, :] >= settle[:, None]
    argmax = np.where(settled & right[:, None], 7, rng.integers(100, 200, size=(n, layers)))
    if overthink:
        lost = right & (settle < layers) & (rng.random(n) < overthink)
        argmax[lost, -1] = 99
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


@pytest.mark.parametrize(
    ("bound", "loss"), [("binomial", "flip"), ("hb", "flip"), ("wsr", "flip"), ("wsr", "drop")]
)
def test_the_guarantee_holds_over_calibration_draws(bound, loss):
    """P(test drop > ε) ≤ δ: draw many calibration sets from one population and score each
    chosen threshold on a large independent sample (its true drop, up to noise)."""
    limit = RiskLimit(epsilon=0.05, delta=0.2, grid=40, bound=bound, loss=loss)
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
        assert chosen.upper_bound <= limit.epsilon  # what the test rejected, its bound says
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


def test_resplits_score_the_pool_once_and_match_calibrating_each_split_afresh():
    """resplit_check reuses the pool's scores: every re-split must come out as calibrating a
    fresh copy of the policy on that split and scoring it on the rest, from the records."""
    train, cal, test = population(500, seed=3), population(400, seed=5), population(300, seed=6)
    limit = RiskLimit(epsilon=0.05, delta=0.2, grid=40)
    policy = GapThreshold()
    checked = resplit_check(policy, train, cal, test, limit, 6, seed=7)
    pool, rng = LayerRecords.concat([cal, test]), np.random.default_rng(7)
    drops, pool_drops, certified = [], [], []
    for _ in range(6):
        order = rng.permutation(pool.num_instances)
        trial = GapThreshold()
        certified.append(calibrate(trial, train, pool.take(order[:400]), limit).certified)
        drops.append(drop(pool.take(order[400:]), trial))
        pool_drops.append(drop(pool, trial))
    assert all(certified) and max(drops) > 0  # it exits, and not only where nothing is lost
    assert checked["risk_resplit_certified_rate"] == 1.0
    assert checked["risk_resplit_drop_mean"] == pytest.approx(np.mean(drops))
    assert checked["risk_resplit_drop_max"] == pytest.approx(max(drops))
    assert checked["risk_resplit_drop_sd"] == pytest.approx(np.std(drops)) and np.std(drops) > 0
    # the drop over the whole pool (the population calibrated on), not over its test part
    assert checked["risk_resplit_pool_drop_mean"] == pytest.approx(np.mean(pool_drops))
    assert checked["risk_resplit_pool_drop_mean"] != pytest.approx(np.mean(drops))
    over = np.mean(np.asarray(pool_drops) > limit.epsilon)
    assert checked["risk_resplit_pool_exceed_rate"] == over


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
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.search_runs(experiment_names=["risk"]).iloc[0]
    assert (run["params.risk_bound"], run["params.risk_loss"]) == ("binomial", "flip")
    assert metrics["risk_n"] == 10
    assert metrics["risk_certified"] == 0.0  # 10 instances cannot certify 5 points at δ=0.1
    assert metrics["acc_drop"] == 0.0 and metrics["exit_layer_mean"] == 4
    assert metrics["risk_resplits"] == 3 and metrics["risk_resplit_certified_rate"] == 0.0


# --- the bounds ------------------------------------------------------------------------------

N_SIM = 2000  # Monte Carlo draws per null; 3 standard errors of a rate of δ = 0.1: 0.02
MC_TOLERANCE = 3 * math.sqrt(0.1 * 0.9 / N_SIM)


def bernoulli_null(rng, n: int, epsilon: float) -> tuple[np.ndarray, str]:
    return (rng.random(n) < epsilon).astype(np.int64), "flip"


def drop_null(rng, n: int, epsilon: float) -> tuple[np.ndarray, str]:
    """Signed drops with mean exactly ε: 10% of instances lost, 10% − ε fixed."""
    return rng.choice([-1, 0, 1], size=n, p=[0.1 - epsilon, 0.8 + epsilon, 0.1]), "drop"


def rejection_rate(p_of, null, epsilon=0.05, delta=0.1, n=200, seed=0) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([p_of(*null(rng, n, epsilon)) <= delta for _ in range(N_SIM)]))


@pytest.mark.parametrize(
    ("bound", "null"),
    [
        ("binomial", bernoulli_null),
        ("hb", bernoulli_null),
        ("wsr", bernoulli_null),
        ("hb", drop_null),
        ("wsr", drop_null),
    ],
)
def test_each_p_value_is_valid_at_the_boundary(bound, null):
    """With the true risk exactly ε, a valid p-value is ≤ δ at most a δ share of the time."""

    def p_of(values, loss):
        return risk_p_value(values, RiskLimit(0.05, 0.1, bound=bound, loss=loss))

    assert rejection_rate(p_of, null) <= 0.1 + MC_TOLERANCE


def test_the_validity_check_catches_an_invalid_p_value():
    """The binomial p-value on the drop loss's net count (the pairing compose refuses) treats
    −1/0/1 losses as 0/1 ones, underestimates their spread and rejects far too often."""

    def p_of(values, loss):
        return binomial_p_value(max(int(values.sum()), 0), values.size, 0.05)

    assert rejection_rate(p_of, drop_null) > 0.1 + 5 * MC_TOLERANCE


def test_the_bounds_reject_when_the_risk_is_well_below_epsilon():
    """Validity alone is passed by p = 1: each bound must also certify a clearly small risk."""
    rng = np.random.default_rng(0)
    flips = (rng.random(1000) < 0.01).astype(np.int64)
    drops = rng.choice([-1, 0, 1], size=1000, p=[0.08, 0.85, 0.07])  # mean −0.01: net fixes
    for bound in ("binomial", "hb", "wsr"):
        assert risk_p_value(flips, RiskLimit(0.05, bound=bound)) < 0.01
    assert risk_p_value(drops, RiskLimit(0.05, bound="wsr", loss="drop")) < 0.01


@pytest.mark.parametrize("n", [50, 230, 1000])
@pytest.mark.parametrize("epsilon", [0.01, 0.05, 0.2])
def test_hb_is_never_sharper_than_the_binomial_on_0_1_losses(n, epsilon):
    for k in range(n // 3):
        assert hb_p_value(k, n, epsilon) >= binomial_p_value(k, n, epsilon) * (1 - 1e-12)


@pytest.mark.parametrize(
    ("bound", "loss", "needed"),
    [("binomial", "flip", 230), ("hb", "flip", 230), ("wsr", "flip", 310), ("wsr", "drop", 318)],
)
def test_how_many_loss_free_instances_each_bound_needs(bound, loss, needed):
    """docs/studies/2026-11-30-bounds-and-losses.md: at ε = 1 point and δ = 0.1, the fewest
    calibration instances that certify a threshold losing (and fixing) none."""
    limit = RiskLimit(0.01, 0.1, bound=bound, loss=loss)
    none_lost = np.zeros(needed, dtype=np.int64)
    assert risk_p_value(none_lost, limit) <= 0.1 < risk_p_value(none_lost[1:], limit)


def test_hb_on_the_drop_loss_needs_tens_of_thousands():
    """Hoeffding–Bentkus sees only the mean, and a drop of 0 sits mid-range (0.5 against
    (1 + ε)/2 = 0.505): even with no loss it needs over 30,000 instances at ε = 1 point."""
    limit = RiskLimit(0.01, 0.1, bound="hb", loss="drop")
    assert risk_p_value(np.zeros(30_000, dtype=np.int64), limit) > 0.1
    assert risk_p_value(np.zeros(34_000, dtype=np.int64), limit) <= 0.1


def test_wsr_depends_on_the_order_only_through_its_bets():
    """Deterministic given the order; another order of the same losses may differ."""
    x = (np.random.default_rng(1).random(300) < 0.03).astype(float)
    assert wsr_p_value(x, 0.1, 0.1) == wsr_p_value(x.copy(), 0.1, 0.1)
    assert wsr_p_value(np.zeros(300), 0.1, 0.1) < 1e-6  # no loss in 300: the capital soars
    assert wsr_p_value(np.ones(300), 0.1, 0.1) == 1.0


# --- the losses ------------------------------------------------------------------------------


def test_the_drop_loss_is_the_flip_loss_when_no_exit_fixes_an_answer():
    records = population(2000, seed=5)  # a wrong full answer is wrong at every layer
    for layer in (1, 4, 8, 12):
        exits = np.full(records.num_instances, layer)
        flip, drop = losses(records, exits), losses(records, exits, "drop")
        assert flip.any() or layer == 12
        np.testing.assert_array_equal(drop, flip.astype(np.int64))
        assert drop.mean() == pytest.approx(apply_exits(records, exits).accuracy_drop(records.gold))


def test_the_drop_loss_gives_credit_for_fixes():
    """Where early exits fix answers the last layer breaks, the drop loss certifies a more
    aggressive threshold than the flip loss under the same bound, and its calibration drop
    stays within ε."""
    train = population(500, seed=3, overthink=0.3)
    cal = population(1500, seed=6, overthink=0.3)
    fixes = losses(cal, np.full(cal.num_instances, 11), "drop") == -1
    assert fixes.sum() > 50
    chosen = {}
    for loss in ("flip", "drop"):
        policy = GapThreshold()
        chosen[loss] = calibrate(policy, train, cal, RiskLimit(0.02, bound="wsr", loss=loss))
        assert chosen[loss].certified
    assert chosen["drop"].threshold < chosen["flip"].threshold
    assert chosen["drop"].tested > chosen["flip"].tested
    assert chosen["drop"].cal_drop <= 0.02 and chosen["drop"].upper_bound <= 0.02


# --- settings --------------------------------------------------------------------------------


def test_default_results_are_unchanged():
    """risk.bound and risk.loss unset are the binomial on the flip loss, with the numbers the
    code gave before they existed (pinned from commit fc4ad0b)."""
    pinned = [
        ((0.05, 400, 11), (0.5946261882781981, 13, 0.06136189975028436, 0.047041112711893936, 15)),
        (
            (0.02, 1000, 12),
            (0.6122018013681683, 0, 1.6829673572159574e-09, 0.002299936177446683, 14),
        ),
        ((0.01, 300, 13), (0.6122018013681683, 0, 0.049040894071285854, 0.0076459038678994935, 14)),
    ]
    train = population(500, seed=3)
    for (epsilon, n, seed), (threshold, k, p, bound, tested) in pinned:
        cal = population(n, seed=seed)
        default = calibrate(GapThreshold(), train, cal, RiskLimit(epsilon, 0.1, grid=50))
        explicit = RiskLimit(epsilon, 0.1, grid=50, bound="binomial", loss="flip")
        assert calibrate(GapThreshold(), train, cal, explicit) == default
        assert (default.threshold, default.losses, default.tested) == (threshold, k, tested)
        assert default.p_value == pytest.approx(p, rel=1e-12)
        assert default.upper_bound == pytest.approx(bound, rel=1e-12)
    assert compose_cfg([]).risk.bound == "binomial" and compose_cfg([]).risk.loss == "flip"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "drop"}, "risk.bound=binomial with risk.loss=drop"),
        ({"bound": "hoeffding"}, "unknown risk.bound='hoeffding'"),
        ({"loss": "zero_one"}, "unknown risk.loss='zero_one'"),
    ],
)
def test_a_bound_that_cannot_test_the_loss_is_refused(kwargs, message):
    with pytest.raises(AdaInferError, match=message) as err:
        RiskLimit(0.01, **kwargs)
    assert "Fix:" in str(err.value)


def test_a_mismatched_bound_and_loss_exit_2_at_compose(tmp_path):
    proc = run_py(["risk.epsilon=0.01", "risk.loss=drop"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "risk.bound=binomial with risk.loss=drop" in proc.stderr
    assert "risk.bound=wsr risk.loss=drop" in proc.stderr  # the fix, spelt out
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_run_says_in_one_line_what_it_saved_and_what_it_guaranteed():
    from adainfer.run.verdict import verdict

    metrics = {"honest_flops_ratio": 0.8, "flops_ratio": 0.7, "acc_drop": 0.01, "risk_n": 400.0}
    limit = RiskLimit(0.05, 0.1, bound="wsr", loss="drop")
    certified = verdict(metrics | {"risk_certified": 1.0}, limit)
    assert certified.startswith("saved 20.0% of the full model's FLOPs")
    assert (
        "guaranteed: a drop <= 5 points w.p. >= 0.9 (wsr bound on the drop loss, 400" in certified
    )
    refused = verdict(metrics | {"risk_certified": 0.0}, limit)
    assert "nothing could be certified" in refused and "guaranteed" not in refused
    costly = verdict(metrics | {"honest_flops_ratio": 1.149}, None)
    assert costly.startswith("cost 14.9% more than the full model's FLOPs")
    assert "no guarantee asked" in costly
    assert "\n" not in certified + refused + costly


def test_the_default_job_runs_end_to_end_and_says_what_it_guaranteed(
    tracking_uri, tmp_path, data_dir, monkeypatch, caplog
):
    """The default job's choices (conf/preset/certified.yaml: SST-2, classifier=auto through the
    tuned lens, a wsr·drop guarantee) on tiny_llama at small sizes: one verdict line that names
    the chosen candidate and states the guarantee, or says the full model ran, in which case it
    never exits early and costs exactly the full model."""
    monkeypatch.setenv("ADAINFER_DATA_DIR", str(data_dir))
    cfg = compose_cfg(
        [
            "preset=certified",
            "model=tiny_llama",
            "shots=1",
            "task.n_train=40",
            "task.n_calibration=60",
            "task.n_test=30",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=default_job",
            f"traces.dir={tmp_path}",
        ]
    )
    with caplog.at_level(logging.INFO, logger="adainfer.run.job"):
        metrics = pipeline.run(cfg)
    (line,) = [r.getMessage() for r in caplog.records if "the full model's FLOPs" in r.getMessage()]
    if metrics["risk_certified"]:
        assert "]: classifier=auto chose " in line
        assert "guaranteed: a drop <= 5 points w.p. >= 0.9 (wsr bound on the drop loss" in line
    else:  # nothing certified pays: the full model, and the line says so
        assert "]: classifier=auto ran the full model: none of its" in line
        assert "at a drop <= 5 points w.p. >= 0.9" in line
        assert metrics["auto_full_model"] == 1 and metrics["honest_flops_ratio"] == 1.0
        assert metrics["acc"] == metrics["acc_full"]
        assert metrics["exit_layer_mean"] == cfg.model.num_layers
