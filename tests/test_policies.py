"""Exit policies: the oracles' guarantees, thresholds, and save / reload."""

from __future__ import annotations

import numpy as np
import pytest
from test_units import _records

from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import (
    CRFPolicy,
    GapThreshold,
    LogRegPolicy,
    NeverExit,
    OracleConsistent,
    OracleGold,
    SVMPolicy,
    load_policy,
)
from adainfer.errors import AdaInferError


def _flippy(seed: int = 2):
    """Records whose predictions change back and forth before settling."""
    rec = _records(seed)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 3, rec.argmax.shape)
    rec.argmax = np.where(rng.random(rec.argmax.shape) < 0.3, noise, rec.argmax)
    return rec


def test_oracle_consistent_keeps_full_model_output():
    rec = _flippy()
    result = apply_exits(rec, OracleConsistent().exit_layers(rec))
    assert np.array_equal(result.prediction, result.full_prediction)
    assert result.exit_layer.mean() < rec.num_layers
    # Earliest: one layer sooner would change the output wherever it exits above layer 1.
    earlier = np.maximum(result.exit_layer - 1, 1)
    moved = result.exit_layer > 1
    before = rec.argmax[np.arange(rec.num_instances), earlier - 1]
    assert (before[moved] != result.full_prediction[moved]).all()


def test_oracle_gold_is_right_wherever_any_layer_is():
    rec = _flippy()
    result = apply_exits(rec, OracleGold().exit_layers(rec))
    ever_right = rec.labels.any(axis=1)
    assert (result.prediction[ever_right] == rec.gold[ever_right]).all()
    assert np.mean(result.prediction == rec.gold) >= np.mean(result.full_prediction == rec.gold)


def test_svm_threshold_zero_is_its_prediction():
    train, test = _records(0), _records(1)
    policy = SVMPolicy().fit(train)
    predicted = policy.model.predict(test.features(policy.features).reshape(-1, 2)) == 1
    assert np.array_equal(policy.stop_mask(test).ravel(), predicted)


@pytest.mark.parametrize(
    "policy",
    [
        SVMPolicy(C=0.5),
        LogRegPolicy(),
        CRFPolicy(),
        CRFPolicy(threshold=0.3),
        GapThreshold(),
        NeverExit(),
        OracleConsistent(),
    ],
)
def test_saved_policies_reload_and_predict_identically(policy, tmp_path):
    train, test = _flippy(0), _flippy(1)
    policy.fit(train)
    policy.save(tmp_path / "p")
    files = {p.name for p in (tmp_path / "p").iterdir()}
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    again = load_policy(tmp_path / "p")
    assert type(again) is type(policy) and again.num_layers == train.num_layers
    assert np.array_equal(again.exit_layers(test), policy.exit_layers(test))
    np.testing.assert_allclose(again.scores(test), policy.scores(test))


def test_untrusted_model_file_is_refused(tmp_path):
    import json

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    SVMPolicy().fit(_records(0)).save(tmp_path)
    sio.dump(FunctionTransformer(func=json.dumps), tmp_path / "model.skops")  # code, not data
    with pytest.raises(AdaInferError, match="does not trust"):
        load_policy(tmp_path)


def test_tradeoff_curve_orders_cost_by_threshold():
    from adainfer.decide.tradeoff import tradeoff_curve

    train, test = _flippy(0), _flippy(1)
    curve = tradeoff_curve(LogRegPolicy().fit(train), test, hidden_size=64, vocab_size=1000)
    sweep = curve[curve.policy == "logreg"].sort_values("threshold")
    assert len(sweep) > 3
    assert np.all(np.diff(sweep.flops_ratio.to_numpy()) >= -1e-12)  # stricter = later exits
    refs = curve[curve.threshold.isna()].set_index("policy")
    assert refs.loc["never", "flops_ratio"] == pytest.approx(1.0)
    assert refs.loc["oracle_consistent", "acc"] == refs.loc["never", "acc"]
    assert refs.loc["oracle_gold", "acc"] >= refs.loc["never", "acc"]


def _strict_json(path):
    """policy.json as a strict JSON reader (jq, JavaScript) parses it: no NaN / Infinity."""
    import json

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_never_exit_threshold_round_trips_as_infinity(tmp_path):
    from adainfer.decide.risk import RiskLimit, calibrate

    train, cal, test = _flippy(0), _flippy(1), _flippy(3)
    policy = GapThreshold().fit(train)
    # 5 losses out of 5 cannot certify anything: the policy learns "never exit" (+inf).
    assert not calibrate(policy, train, cal.take(np.arange(5)), RiskLimit(0.01, 0.1)).certified
    assert policy.threshold == np.inf and policy.never_stops()
    policy.save(tmp_path / "p")
    assert _strict_json(tmp_path / "p" / "policy.json")["params"]["threshold"] == "inf"
    again = load_policy(tmp_path / "p")
    assert again.threshold == np.inf and again.never_stops()
    assert np.array_equal(again.exit_layers(test), policy.exit_layers(test))
    assert np.all(again.exit_layers(test) == test.num_layers)


@pytest.mark.parametrize("name", ["../outside.skops", "/etc/hostname", "sub/model.skops", ".."])
def test_model_file_outside_the_policy_folder_is_refused(tmp_path, name):
    import json

    folder = tmp_path / "p"
    SVMPolicy().fit(_records(0)).save(folder)
    (tmp_path / "outside.skops").write_bytes((folder / "model.skops").read_bytes())
    meta = json.loads((folder / "policy.json").read_text())
    meta["model_file"] = name
    (folder / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(AdaInferError, match="not a plain file name inside the policy folder"):
        load_policy(folder)


def test_model_file_linked_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "p"
    SVMPolicy().fit(_records(0)).save(folder)
    (folder / "model.skops").rename(tmp_path / "elsewhere.skops")
    (folder / "model.skops").symlink_to(tmp_path / "elsewhere.skops")
    with pytest.raises(AdaInferError, match="refusing to read outside it"):
        load_policy(folder)
