"""The probe schedule: where a policy is asked, and the dynamic program that chooses it.

The DP is checked against brute force over every subset; its exit model against the exits a
policy really makes; its cost against honest FLOPs as trace evaluation counts them; and
``schedule=all`` against the rule from before schedules existed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import mlflow
import numpy as np
import pytest
from conftest import compose_cfg
from test_cli import run_py
from transformers import LlamaConfig

from adainfer.compose.settings import check_settings
from adainfer.decide.costs import BatchWork, read_prices, single_prompt_work, trace_flops_ratio
from adainfer.decide.policies import GapThreshold, StatePolicy, SVMPolicy, first_exit, load_policy
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit, calibrate, resplit_check
from adainfer.decide.schedule import InstanceCosts, ReadPrices, best_schedule, instance_costs
from adainfer.engine import FixedExit
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

CONFIG = LlamaConfig(
    num_hidden_layers=8,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=3000,
)


# -- a plain reference: the exit model and its cost, instance by instance -----------------------
def model_exit(t: int, schedule: tuple[int, ...], L: int) -> int:
    """The first scheduled layer at or after the first stop ``t``, else the last layer."""
    return next((s for s in sorted(schedule) if s >= t), L)


def model_cost(first_stop, schedule, costs: InstanceCosts, L: int) -> float:
    total = 0.0
    for n, t in enumerate(first_stop):
        e = model_exit(int(t), schedule, L)
        reads = sum(1 for s in schedule if s <= e)
        answer = costs.stop[n] if e < L else costs.last[n]
        total += e * costs.layer[n] + reads * costs.read[n] + answer
    return total


def brute_force(first_stop, costs: InstanceCosts, L: int, first_layer: int):
    """(least cost, every schedule of that cost) over all subsets of first_layer..L-1."""
    layers = range(first_layer, L)
    scored = [
        (model_cost(first_stop, s, costs, L), s)
        for r in range(len(layers) + 1)
        for s in itertools.combinations(layers, r)
    ]
    best = min(c for c, _ in scored)
    return best, [s for c, s in scored if np.isclose(c, best, rtol=1e-12, atol=0)]


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 9))
    first_layer = int(rng.integers(1, L + 1))
    n = int(rng.integers(1, 30))
    stop = rng.random((n, L)) < rng.uniform(0.05, 0.6)  # not monotone: any mask
    layers = np.arange(1, L + 1)
    first_stop = first_exit(stop & (layers >= first_layer) & (layers < L))
    widths = rng.integers(3, 200, n)
    return rng, L, first_layer, first_stop, widths


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("probe_price", [0.0, 0.3, 2.5, 40.0])
def test_the_dp_finds_the_least_cost_that_brute_force_finds(seed, probe_price):
    """Random first stops, prompt lengths and read prices; every subset of the layers tried."""
    rng, L, first_layer, first_stop, widths = _random_case(seed)
    # a layer's price grows with the prompt (a linear and a quadratic term, as costs.layer)
    prices = ReadPrices(lambda w: 10.0 * w + 0.05 * w * w, probe_price * 1000.0, 900.0, 64)
    for reads_probe, decides in [(True, True), (False, True), (False, False)]:
        decision = float(rng.uniform(0, 50))
        costs = instance_costs(prices, widths, L, reads_probe, decision, decides)
        schedule, cost = best_schedule(first_stop, costs, L, first_layer)
        best, optimal = brute_force(first_stop, costs, L, first_layer)
        assert cost == pytest.approx(best, rel=1e-12)
        assert model_cost(first_stop, schedule, costs, L) == pytest.approx(best, rel=1e-12)
        assert schedule in optimal
        assert all(first_layer <= s < L for s in schedule) and list(schedule) == sorted(schedule)


@pytest.mark.parametrize("seed", range(20))
def test_the_dp_finds_brute_forces_least_cost_with_any_per_instance_prices(seed):
    rng, L, first_layer, first_stop, _ = _random_case(seed)
    n = len(first_stop)
    costs = InstanceCosts(*(rng.uniform(0, 5, n) for _ in range(4)))
    schedule, cost = best_schedule(first_stop, costs, L, first_layer)
    best, optimal = brute_force(first_stop, costs, L, first_layer)
    assert cost == pytest.approx(best, rel=1e-12) and schedule in optimal


def test_free_reads_ask_where_someone_stops_and_dear_ones_ask_nowhere():
    first_stop = np.array([2, 2, 5, 6, 6])  # L = 6: the last two never stop
    cheap = InstanceCosts(*(np.full(5, x) for x in (1.0, 0.0, 0.0, 0.0)))
    assert best_schedule(first_stop, cheap, 6)[0] == (2, 5)  # ties: no read where none stops
    dear = InstanceCosts(*(np.full(5, x) for x in (1.0, 100.0, 0.0, 0.0)))
    assert best_schedule(first_stop, dear, 6) == ((), 30.0)  # the full model: 5 · 6 layers


# -- the exit model is the policy's real exits when a stop stays on -----------------------------
def _monotone(rng, n: int, L: int) -> np.ndarray:
    """A stop mask that, once on, stays on (from a random layer; some rows never)."""
    start = rng.integers(1, L + 2, n)
    return np.arange(1, L + 1)[None, :] >= start[:, None]


@pytest.mark.parametrize("seed", range(10))
def test_on_monotone_stops_the_exit_model_is_the_policys_scheduled_exits(seed):
    rng = np.random.default_rng(seed)
    L, n = 9, 50
    stop = _monotone(rng, n, L)
    layers = np.arange(1, L + 1)
    for first_layer in (1, 3):
        every = first_exit(stop & (layers >= first_layer) & (layers < L))
        for schedule in [(2, 5, 8), (first_layer,), tuple(range(first_layer, L, 3)), (4, 9)]:
            policy = GapThreshold(first_layer=first_layer, schedule=list(schedule))
            modelled = [model_exit(int(t), policy.scheduled_layers(L), L) for t in every]
            assert policy.first_exits(stop).tolist() == modelled


def test_when_a_stop_switches_off_the_exit_model_is_only_a_cost_model():
    stop = np.array([[False, True, False, True, False]])  # stops at 2, not at 3, again at 4
    policy = GapThreshold(schedule=[3, 4])
    assert policy.first_exits(stop).tolist() == [4]  # really: asked at 3, told to go on
    assert model_exit(2, (3, 4), 5) == 3  # the model: the first read after its first stop


# -- the DP's cost is trace evaluation's honest FLOPs -------------------------------------------
def _gap_records(seed: int, n: int = 80, L: int = 8) -> LayerRecords:
    """gap rises layer by layer from a random start (a gap rule's stop stays on once on), and
    the answer is mostly the final one where it is high."""
    rng = np.random.default_rng(seed)
    gap = np.sort(rng.random((n, L)), axis=1) ** rng.uniform(0.3, 3, (n, 1))
    final = rng.integers(0, 5, n)
    settled = gap + rng.normal(0, 0.1, (n, L)) > 0.5
    argmax = np.where(settled, final[:, None], rng.integers(0, 5, (n, L)))
    argmax[:, -1] = final
    values = {"gap": gap.astype(np.float32), "top_prob": gap.astype(np.float32)}
    return LayerRecords(values, argmax, final, rng.integers(5, 120, n))


def _state_records(seed: int, n: int = 80, L: int = 8, h: int = 4) -> LayerRecords:
    """A hidden state whose first coordinate is (layer - s_n): P(final) rises with the layer
    (and none of the instances first stops at layers 4 and 5)."""
    rng = np.random.default_rng(seed)
    settle = np.where(rng.random(n) < 0.5, rng.uniform(0, 3, n), rng.uniform(5, L + 2, n))
    hidden = np.zeros((n, L, h))
    hidden[:, :, 0] = np.arange(1, L + 1)[None, :] - settle[:, None]
    records = _gap_records(seed, n, L)
    records.hidden = hidden.astype(np.float16)
    return records


def _rising_state_policy(L: int, h: int = 4) -> StatePolicy:
    policy = StatePolicy(schedule="auto")
    policy.weight = np.zeros((L - 1, h))
    policy.weight[:, 0] = 1.0
    policy.bias = np.zeros(L - 1)
    policy.num_layers = L
    return policy


@pytest.mark.parametrize("first_layer", [1, 3])
@pytest.mark.parametrize("kind", ["gap", "gap tuned", "state"])
def test_the_chosen_schedules_cost_is_the_honest_flops_and_no_schedule_is_cheaper(
    kind, first_layer
):
    """On stops that stay on, the DP's cost / N is the mean honest FLOPs ratio of the exits
    the policy makes under its schedule (a tuned lens's translators and a state head's
    decisions included), and every other schedule's is at least as high."""
    L = CONFIG.num_hidden_layers
    lens = None
    if kind == "gap tuned":
        from adainfer.llm.lenses import TunedLens

        lens = TunedLens.identity(L, CONFIG.hidden_size)
    prices = read_prices(CONFIG, lens)
    if kind == "state":
        records = _state_records(0, L=L)
        policy = _rising_state_policy(L)
        policy.first_layer = first_layer
        policy.choose_schedule(records, prices)
    else:
        records = _gap_records(0, L=L)
        policy = GapThreshold(threshold=0.6, first_layer=first_layer, schedule="auto")
        policy.fit(records, prices)
    chosen = policy.chosen_schedule
    assert 0 < len(chosen) < L - first_layer  # neither every layer nor none: a real choice

    def honest(schedule) -> float:
        policy.schedule = list(schedule) if schedule else "auto"
        if not schedule:  # "no layer" is not a setting: auto with nothing chosen
            policy.chosen_schedule = ()
        exits = policy.exit_layers(records)
        return trace_flops_ratio(exits, records.seq_len, CONFIG, policy, lens).sum()

    stop = policy.stop_mask(records)
    layers = np.arange(1, L + 1)
    first_stop = first_exit(stop & (layers >= first_layer) & (layers < L))
    decides = policy.reads_probe or policy.scores_state
    decision = policy.decision_flops(CONFIG.hidden_size, L) if decides else 0.0
    costs = instance_costs(prices, records.seq_len, L, policy.reads_probe, decision, decides)
    schedule, cost = best_schedule(first_stop, costs, L, first_layer)
    assert schedule == chosen
    assert honest(chosen) == pytest.approx(cost, rel=1e-9)
    candidates = range(first_layer, L)
    for r in range(len(candidates) + 1):
        for other in itertools.combinations(candidates, r):
            assert honest(other) >= cost * (1 - 1e-9)


# -- read_price: a probe priced in decoder layers ------------------------------------------------
def _weighted_reads(policy, records) -> float:
    """Σ over instances of (reads made up to its exit) × one layer of its prompt."""
    asked = np.array(policy.scheduled_layers(records.num_layers))
    exits = policy.exit_layers(records)
    layer = np.array([read_prices(CONFIG).layer(int(w)) for w in records.seq_len])
    return float(sum((asked <= e).sum() * c for e, c in zip(exits, layer, strict=True)))


def test_a_read_price_equal_to_the_probes_flops_in_layers_chooses_as_flops_do():
    """On prompts of one width, pricing a probe at (its FLOPs / one layer's) layers is the same
    price: the same schedule. A dearer price asks less, a cheaper one more (weighted by the
    layer's price, the reads an optimal schedule makes never rise with their price)."""
    records = _gap_records(0, n=200)
    records.seq_len = np.full(records.num_instances, 64)
    prices = read_prices(CONFIG)
    in_layers = prices.probe / prices.layer(64)
    by_flops = GapThreshold(threshold=0.6, schedule="auto").fit(records, prices)
    same = GapThreshold(threshold=0.6, schedule="auto", read_price=in_layers)
    assert same.fit(records, prices).chosen_schedule == by_flops.chosen_schedule
    records = _gap_records(1, n=200)  # prompts of many widths
    reads = []
    for price in [0.001, 0.01, 0.05, 0.2, 1.0, 3.0]:
        policy = GapThreshold(threshold=0.6, schedule="auto", read_price=price)
        reads.append(_weighted_reads(policy.fit(records, prices), records))
    assert reads == sorted(reads, reverse=True) and reads[0] > reads[-1]


def test_a_read_price_prices_a_state_heads_exit_probe_too():
    """A state head reads no probe but pays one for the answer when it exits early: priced in
    layers too. Dear enough, exits below the last layer stop paying, and auto asks nowhere."""
    L = 8
    records = _state_records(0, L=L)
    prices = read_prices(CONFIG)
    cheap, dear = _rising_state_policy(L), _rising_state_policy(L)
    cheap.read_price, dear.read_price = 0.01, 2 * L
    assert cheap.choose_schedule(records, prices) and not dear.choose_schedule(records, prices)
    layer = np.array([prices.layer(int(w)) for w in records.seq_len])
    costs = instance_costs(replace(prices, probe_layers=0.5), records.seq_len, L, False, 7.0, True)
    full = L * layer + prices.answer
    np.testing.assert_allclose(costs.stop, 0.5 * layer / full)
    np.testing.assert_allclose(costs.read, 7.0 / full)


@pytest.mark.parametrize("bad", [0, -1.0, "0.7", True, float("nan")])
def test_a_bad_read_price_is_refused(bad):
    with pytest.raises(AdaInferError, match="is not a number of layers > 0") as err:
        SVMPolicy(schedule="auto", read_price=bad)
    assert "classifier.read_price=0.7" in str(err.value)


def test_a_read_price_setting_is_checked_before_any_run():
    assert check_settings(compose_cfg(["classifier.read_price=0.7"])) == []
    assert check_settings(compose_cfg(["classifier.read_price=null"])) == []
    problems = check_settings(compose_cfg(["classifier.read_price=0"]))
    assert len(problems) == 1 and "is not a number of layers > 0, or null" in problems[0]


# -- schedule=all is the rule from before schedules ---------------------------------------------
def _legacy_first_exits(stop: np.ndarray, first_layer: int) -> np.ndarray:
    stop = stop.copy()
    stop[:, : first_layer - 1] = False
    return first_exit(stop)


def _legacy_work(exit_layer, width, policy, num_layers) -> BatchWork:
    layers = range(1, exit_layer + 1)
    scores = policy.reads_probe or policy.scores_state
    classified = [int(scores and policy.first_layer <= layer < num_layers) for layer in layers]
    if policy.reads_probe:
        probed = [int(layer >= policy.first_layer) for layer in layers]
    else:
        probed = [int(layer == exit_layer) for layer in layers]
    return BatchWork(width, np.array([width]), [1] * exit_layer, probed, classified)


@pytest.mark.parametrize("first_layer", [1, 2, 5, 7])
def test_schedule_all_exits_and_works_as_before(first_layer):
    rng = np.random.default_rng(first_layer)
    L = 7
    stop = rng.random((200, L)) < 0.2
    records = _state_records(1, L=L)
    state = _rising_state_policy(L)
    state.schedule = "all"
    policies = [GapThreshold(), FixedExit(3), state, GapThreshold(threshold=np.inf)]
    for policy in policies:
        policy.first_layer = first_layer
        assert policy.schedule == "all"
        expected = _legacy_first_exits(stop, first_layer)
        assert policy.first_exits(stop).tolist() == expected.tolist()
        for same in ("every_1", list(range(first_layer, L + 1))):
            policy.schedule = same
            assert policy.first_exits(stop).tolist() == expected.tolist()
        policy.schedule = "all"
        for exit_layer in range(first_layer, L + 1):
            now = single_prompt_work(exit_layer, 17, policy, L)
            before = _legacy_work(exit_layer, 17, policy, L)
            assert (now.rows, now.probed, now.classified) == (
                before.rows,
                before.probed,
                before.classified,
            )
    assert (
        state.exit_layers(records).tolist()
        == _legacy_first_exits(state.stop_mask(records), first_layer).tolist()
    )


def test_every_k_asks_from_first_layer_every_k_layers_below_the_last():
    policy = GapThreshold(first_layer=2, schedule="every_3")
    assert policy.scheduled_layers(10) == (2, 5, 8)
    policy.schedule = [9, 3, 1, 3, 10]
    assert policy.schedule == (1, 3, 9, 10)
    assert policy.scheduled_layers(10) == (3, 9)  # none before first_layer, none at the last
    with pytest.raises(AdaInferError, match=r"schedule layers \[9, 10\] are beyond .* 8 layers"):
        policy.scheduled_layers(8)


# -- settings, persistence, risk control --------------------------------------------------------
@pytest.mark.parametrize("bad", ["some", "every_0", "every_", "every_-2", "every_2x", 3, [], [0]])
def test_a_bad_schedule_is_refused_by_the_policy(bad):
    with pytest.raises(AdaInferError, match="is not all, auto, every_<k>"):
        GapThreshold(schedule=bad)


def test_auto_needs_prices_and_a_fit():
    records = _gap_records(0)
    policy = GapThreshold(schedule="auto")
    with pytest.raises(AdaInferError, match="schedule='auto'.*not fitted yet"):
        policy.exit_layers(records)
    with pytest.raises(AdaInferError, match="prices=adainfer.decide.costs.read_prices"):
        policy.fit(records)


GOOD = ["all", "auto", "every_1", "every_4", "[2,5]"]
BAD = ["every_0", "sometimes", "[0,3]", "[]", "2"]


@pytest.mark.parametrize("value", GOOD + BAD)
def test_a_schedule_setting_is_checked_before_any_run(value):
    problems = check_settings(compose_cfg([f"classifier.schedule={value}"]))
    if value in GOOD:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith("classifier.schedule="), problems
        assert "is not all, auto, every_<k> (k >= 1) or a list of layer numbers >= 1" in problems[0]


def test_a_bad_schedule_from_the_command_line_exits_2_before_any_run(tmp_path):
    proc = run_py(["classifier=state", "classifier.schedule=every_0"], tmp_path)
    assert proc.returncode == 2
    assert "adainfer: error: bad setting classifier.schedule='every_0' is not" in proc.stderr
    assert "e.g. classifier.schedule=every_2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("read_price", [None, 0.7])
@pytest.mark.parametrize("schedule", ["all", "every_2", [2, 6], "auto"])
def test_a_saved_schedule_reloads_and_decides_the_same(schedule, read_price, tmp_path):
    train, test = _gap_records(0), _gap_records(1)
    policy = SVMPolicy(first_layer=2, schedule=schedule, read_price=read_price)
    policy.fit(train, read_prices(CONFIG))
    policy.save(tmp_path / "p")
    again = load_policy(tmp_path / "p")
    assert again.schedule == policy.schedule and again.chosen_schedule == policy.chosen_schedule
    assert again.read_price == read_price
    assert again.scheduled_layers(8) == policy.scheduled_layers(8)
    assert np.array_equal(again.exit_layers(test), policy.exit_layers(test))


def test_a_policy_saved_before_schedules_loads_asking_every_layer(tmp_path):
    import json

    GapThreshold(first_layer=2).fit(_gap_records(0)).save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "policy.json").read_text())
    del meta["schedule"]
    (tmp_path / "p" / "policy.json").write_text(json.dumps(meta))
    assert load_policy(tmp_path / "p").schedule == "all"


def test_risk_control_chooses_each_candidates_schedule_on_the_train_records_only(monkeypatch):
    """Each candidate threshold gets its schedule from the train split, before the calibration
    split is read: the (threshold, schedule) pairs are fixed in advance."""
    train, cal = _gap_records(0, n=300), _gap_records(1, n=300)
    prices = read_prices(CONFIG)
    policy = GapThreshold(schedule="auto").fit(train, prices)
    seen = []
    choose = GapThreshold.choose_schedule

    def spy(self, records, prices_, threshold=None, scores=None):
        seen.append((records is train, threshold))
        return choose(self, records, prices_, threshold, scores)

    monkeypatch.setattr(GapThreshold, "choose_schedule", spy)
    chosen = calibrate(policy, train, cal, RiskLimit(0.2), prices)
    assert len(seen) > 2 and all(on_train for on_train, _ in seen)
    assert chosen.certified and chosen.tested >= 1
    assert policy.chosen_schedule  # a certified pair asks somewhere: an empty one is skipped
    monkeypatch.undo()
    again = GapThreshold(threshold=chosen.threshold, schedule="auto").fit(train, prices)
    assert policy.chosen_schedule == again.chosen_schedule  # the certified pair's schedule
    test = _gap_records(2, n=300)
    checked = resplit_check(policy, train, cal, test, RiskLimit(0.2), 3, prices=prices)
    assert checked["risk_resplits"] == 3 and checked["risk_resplit_certified_rate"] > 0


def test_auto_resplits_match_calibrating_each_split_afresh():
    """resplit_check scores the train records once for every re-split's candidates and
    schedules: each re-split must still come out as calibrating a fresh copy on that split,
    its threshold with the schedule chosen for it on the train records."""
    train, cal, test = _gap_records(0, n=300), _gap_records(1, n=100), _gap_records(2, n=200)
    prices, limit = read_prices(CONFIG), RiskLimit(0.1, 0.2, grid=30)
    policy = GapThreshold(schedule="auto").fit(train, prices)
    checked = resplit_check(policy, train, cal, test, limit, 4, seed=5, prices=prices)
    pool, rng = LayerRecords.concat([cal, test]), np.random.default_rng(5)
    exits, schedules = [], set()
    for _ in range(4):
        order = rng.permutation(pool.num_instances)
        trial = GapThreshold(schedule="auto").fit(train, prices)
        calibrate(trial, train, pool.take(order[:100]), limit, prices)
        again = GapThreshold(threshold=trial.threshold, schedule="auto").fit(train, prices)
        assert trial.chosen_schedule == again.chosen_schedule
        schedules.add(trial.chosen_schedule)
        exits.append(trial.exit_layers(pool.take(order[100:])).mean())
    assert len(schedules) > 1  # the re-splits certify different pairs
    assert checked["risk_resplit_exit_layer_mean"] == pytest.approx(np.mean(exits))


def test_risk_control_skips_a_candidate_whose_schedule_asks_nowhere():
    """At a cautious threshold few instances stop, and the cheapest schedule reads nowhere: that
    pair is the full model, as +inf is, so it is not counted as certified; the next candidate
    stops everyone, mostly wrong, and fails: nothing is certified."""
    n, L = 200, 8
    sure = np.arange(n) < n // 10  # stop (rightly) only at the cautious threshold
    gap = np.zeros((n, L))
    gap[:, 1:] = np.where(sure, 0.95, 0.6)[:, None]
    final = np.full(n, 7)
    argmax = np.where(sure[:, None] & (gap > 0), 7, 3)
    argmax[:, -1] = 7
    values = {"gap": gap.astype(np.float32), "top_prob": gap.astype(np.float32)}
    records = LayerRecords(values, argmax, final, np.full(n, 10))
    prices = ReadPrices(lambda w: 1.0, 5.0, 0.0, 4)  # a read costs five layers
    policy = GapThreshold(schedule="auto").fit(records, prices)
    chosen = calibrate(policy, records, records, RiskLimit(0.1), prices)
    assert not chosen.certified and chosen.tested == 0 and policy.threshold == np.inf
    policy.choose_schedule(records, prices, threshold=0.9)  # the skipped candidate's schedule
    assert policy.chosen_schedule == ()


def test_a_job_logs_what_auto_chose_and_the_engine_follows_it(tmp_path, tracking_uri):
    common = ["model=tiny_llama", "classifier=state", "shots=3", "task.n_train=20"]
    common += ["task.n_test=12", f"traces.dir={tmp_path}", f"mlflow.tracking_uri={tracking_uri}"]
    common += ["mlflow.experiment=schedule"]
    every = pipeline.run(compose_cfg(common))
    auto = pipeline.run(compose_cfg([*common, "classifier.schedule=auto", "engine=true"]))
    assert every["schedule_reads"] == 3  # layers 1..3 of 4
    assert 0 < auto["schedule_reads"] < 3  # a state head's reads are cheap, yet not free
    assert auto["engine_trace_agreement"] == 1.0  # the engine asks where the traces did
    assert auto["acc_full"] == every["acc_full"]
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["schedule"], order_by=["start_time ASC"])
    assert runs["params.schedule"].tolist() == ["all", "auto"]
    assert runs["tags.schedule_layers"].iloc[0] == "1,2,3"
    chosen = runs["tags.schedule_layers"].iloc[1]
    assert len([] if chosen == "none" else chosen.split(",")) == auto["schedule_reads"]
