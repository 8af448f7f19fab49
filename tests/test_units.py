"""Small pieces: Eq. 2, exit decisions, policies, prompts, tasks."""

from __future__ import annotations

import numpy as np
import pytest

from adainfer.decide.flops import flops_ratio
from adainfer.decide.policies import CRFPolicy, GapThreshold, NeverExit, SVMPolicy, first_exit
from adainfer.decide.records import LayerRecords
from adainfer.errors import AdaInferError
from adainfer.tasks import Example, FunctionVectorsTask, PromptTemplate, RuleTask, build_prompts


def test_flops_ratio_eq2():
    assert flops_ratio(30, 30, 576, 40, 49152) == pytest.approx(1.0)
    h, s, V, L = 4096, 100, 32000, 32
    expected = (2 * 16 * (6 * h + s) + V) / (2 * L * (6 * h + s) + V)
    assert flops_ratio(16, L, h, s, V) == pytest.approx(expected)
    # Per-instance lengths broadcast; the longer the sequence, the less the head's share and
    # the closer the ratio gets to l'/l from above.
    ratios = flops_ratio(np.array([8, 8]), L, h, np.array([10, 5000]), V)
    assert 8 / L < ratios[1] < ratios[0]


def test_first_exit():
    stop = np.array([[False, True, True], [False, False, False], [True, False, False]])
    assert first_exit(stop).tolist() == [2, 3, 1]


def _records(seed: int = 0, n: int = 40, L: int = 6) -> LayerRecords:
    """Synthetic records where late layers are confident and right, early ones are not."""
    rng = np.random.default_rng(seed)
    depth = np.arange(1, L + 1) / L
    gap = np.clip(depth[None, :] + rng.normal(0, 0.1, (n, L)), 0, 1)
    top = np.clip(gap + 0.05, 0, 1)
    gold = rng.integers(10, 20, n)
    argmax = np.where(gap > 0.55, gold[:, None], 0)
    return LayerRecords({"gap": gap, "top_prob": top}, argmax, gold, np.full(n, 12))


@pytest.mark.parametrize("policy", [SVMPolicy(), CRFPolicy(), GapThreshold(threshold=0.55)])
def test_policies_learn_where_answers_settle(policy):
    train, test = _records(0), _records(1)
    exits = policy.fit(train).exit_layers(test)
    assert exits.shape == (test.num_instances,)
    assert exits.min() >= 1 and exits.max() <= test.num_layers
    assert exits.mean() < test.num_layers  # something is learnt: not the full model
    preds = test.argmax[np.arange(test.num_instances), exits - 1]
    assert np.mean(preds == test.gold) > 0.8


def test_single_class_training_falls_back_to_never(caplog):
    train = _records(0)
    train.argmax[:] = -1  # nothing is ever right: one class only
    for policy in (SVMPolicy(), CRFPolicy()):
        exits = policy.fit(train).exit_layers(_records(1))
        assert (exits == train.num_layers).all()
    assert "nothing to learn" in caplog.text


def test_never_exit_is_last_layer():
    rec = _records()
    assert (NeverExit().exit_layers(rec) == rec.num_layers).all()


def test_prompt_template_golden():
    demos = [Example("Monday", "Tuesday"), Example("b", "c")]
    text = PromptTemplate().render(demos, Example("March", "April"))
    assert text == "Q: Monday\nA: Tuesday\n\nQ: b\nA: c\n\nQ: March\nA:"


def test_prompts_seeded_and_never_contain_their_instance():
    pool = [Example(f"w{i}", f"v{i}") for i in range(30)]
    a = build_prompts(pool[:10], pool, 5, seed=3)
    b = build_prompts(pool[:10], pool, 5, seed=3)
    c = build_prompts(pool[:10], pool, 5, seed=4)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in c]
    for ex, prompt in zip(pool[:10], a, strict=False):
        assert prompt.text.count("Q: ") == 6
        assert prompt.text.count(f"Q: {ex.input}\n") == 1  # only as the final query
        assert prompt.text.endswith(f"Q: {ex.input}\nA:")


def test_too_many_shots_is_a_clear_error():
    pool = [Example("a", "b"), Example("c", "d")]
    with pytest.raises(AdaInferError, match="shots=5"):
        build_prompts(pool, pool, 5, seed=0)


def test_rule_task_pairs_and_split():
    splits = RuleTask(rule="next_item").load()
    every = splits.train + splits.test
    assert Example("Monday", "Tuesday") in every and Example("Sunday", "Monday") in every
    assert Example("c", "d") in every and Example("z", "a") not in every  # letters do not wrap
    assert len(every) == len(set(every)) == 25 + 25 + 19 + 7 + 12
    prev = RuleTask(rule="prev_item").load()
    assert Example("Tuesday", "Monday") in prev.train + prev.test


def test_function_vectors_split(data_dir):
    task = FunctionVectorsTask("country-capital", data_dir=str(data_dir))
    parts = task.load_all()
    sizes = {k: len(v) for k, v in parts.items()}
    assert sum(sizes.values()) == 197  # SOURCES.md
    assert sizes["train"] == round(0.7 * 197)
    assert sizes["test"] == round(0.7 * (197 - sizes["train"]))
    assert not set(parts["train"]) & set(parts["test"])


def test_function_vectors_accepts_its_own_folder(data_dir):
    direct = FunctionVectorsTask("antonym", data_dir=str(data_dir / "function_vectors"))
    assert len(direct.load_all()["train"]) == round(0.7 * 2398)


def test_function_vectors_bad_inputs(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("ADAINFER_DATA_DIR", raising=False)
    with pytest.raises(AdaInferError, match="no data directory is set"):
        FunctionVectorsTask("antonym").load()
    with pytest.raises(AdaInferError, match="no data directory"):
        FunctionVectorsTask("antonym", data_dir=str(tmp_path / "nowhere")).load()
    with pytest.raises(AdaInferError, match="unknown Function Vectors task 'antnym'"):
        FunctionVectorsTask("antnym", data_dir=str(data_dir)).load()
    bad = tmp_path / "function_vectors" / "abstractive"
    bad.mkdir(parents=True)
    (bad / "t.jsonl").write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    with pytest.raises(AdaInferError, match=r"t.jsonl:2 lacks the field\(s\) \['output'\]"):
        FunctionVectorsTask("t", data_dir=str(tmp_path)).load()
    (bad / "e.jsonl").write_text("".join(f'{{"input": "x{i}", "output": " "}}\n' for i in range(9)))
    with pytest.raises(AdaInferError, match="empty answer"):
        FunctionVectorsTask("e", data_dir=str(tmp_path)).load()
