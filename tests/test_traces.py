"""Compute once, decide many times: the trace store and the policies that read it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import compose_cfg

from adainfer.choices import RECORDED
from adainfer.decide.policies import SVMPolicy
from adainfer.decide.records import HIDDEN_FORMAT, LayerRecords
from adainfer.extract import extractor
from adainfer.extract.store import TraceKey, TraceStore, data_digest
from adainfer.llm import cache
from adainfer.llm.readout import probe_layers
from adainfer.run import job as pipeline
from adainfer.run import tracking
from adainfer.tasks import RuleTask


def _cfg(tracking_uri, tmp_path, experiment, *extra):
    return compose_cfg(
        [
            "model=tiny_llama",
            "task.n_train=16",
            "task.n_test=8",
            "shots=2",
            f"traces.dir={tmp_path / 'traces'}",
            f"mlflow.tracking_uri={tracking_uri}",
            f"mlflow.experiment={experiment}",
            *extra,
        ]
    )


def _runs(tracking_uri, experiment):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


@pytest.fixture
def encoded(tiny_llama):
    task = RuleTask(n_train=12, n_test=6)
    return extractor.prepare(task, task.load(), tiny_llama, 2, 0)


def _key(encoded, **changes) -> TraceKey:
    fields = dict(
        model="tiny_llama",
        model_identity="tiny:abc",
        task="t",
        split="train",
        shots=2,
        seed=0,
        instances=len(encoded.input_ids),
        data=data_digest(encoded),
    )
    return TraceKey(**(fields | changes))


def test_frame_round_trip(tiny_llama, encoded):
    records = extractor.evaluate(tiny_llama, SVMPolicy(), *encoded, batch_size=4).test
    again = LayerRecords.from_frame(records.to_frame())
    assert np.array_equal(again.argmax, records.argmax) and np.array_equal(again.gold, records.gold)
    for name, values in records.values.items():
        assert np.array_equal(again.values[name], values)


def test_trace_reused_only_for_identical_settings(tiny_llama, encoded, tmp_path):
    from adainfer.extract.passes import extract_records

    store = TraceStore(tmp_path)
    train, _ = encoded
    key = _key(train)
    first = store.get_or_compute(key, lambda: extract_records(tiny_llama, train, 4))
    assert store.get(key) is not None and store.misses == 1
    for change in (
        {"shots": 3},
        {"seed": 1},
        {"split": "test"},
        {"model_identity": "tiny:other"},
        {"probe": "tuned"},
        {"precision": "bfloat16|None"},
        {"instances": 11},
        {"data": "0" * 64},
    ):
        assert store.get(_key(train, **change)) is None, change
    # Different prompts (another seed's demonstrations) give another data digest.
    task = RuleTask(n_train=12, n_test=6)
    other, _ = extractor.prepare(task, task.load(), tiny_llama, 2, 5)
    assert data_digest(other) != data_digest(train)
    again = store.get_or_compute(key, lambda: pytest.fail("must not recompute"))
    assert np.array_equal(again.argmax, first.argmax) and store.hits == 1


def test_truncated_or_corrupt_trace_is_recomputed(tiny_llama, encoded, tmp_path, caplog):
    from adainfer.extract.passes import extract_records

    store = TraceStore(tmp_path)
    train, _ = encoded
    key = _key(train)
    store.put(key, extract_records(tiny_llama, train, 4))
    path = store.path(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert store.get(key) is None and not path.exists()
    assert "unusable" in caplog.text
    calls = []
    store.get_or_compute(key, lambda: calls.append(1) or extract_records(tiny_llama, train, 4))
    assert calls == [1] and store.get(key) is not None
    assert not list(tmp_path.glob(".trace-*"))  # no temporary leftovers


def test_second_policy_reads_traces_without_loading_weights(tracking_uri, tmp_path, monkeypatch):
    first = pipeline.run(_cfg(tracking_uri, tmp_path, "reuse", "classifier=never"))
    loads = []
    from adainfer.llm.loading import LoadedModel

    original = LoadedModel.model.fget
    monkeypatch.setattr(
        LoadedModel, "model", property(lambda self: loads.append(1) or original(self))
    )
    second = pipeline.run(_cfg(tracking_uri, tmp_path, "reuse", "classifier=oracle_consistent"))
    assert loads == []  # the LLM was not even loaded
    assert second["acc"] == first["acc"] == first["acc_full"]  # output unchanged by the oracle
    assert second["flops_ratio"] <= 1.0
    runs = _runs(tracking_uri, "reuse")
    assert runs["tags.llm_forward"].tolist() == ["computed", "trace_store"]
    # A different setting (shots) is computed afresh.
    pipeline.run(_cfg(tracking_uri, tmp_path, "reuse", "classifier=never", "shots=1"))
    assert loads and _runs(tracking_uri, "reuse")["tags.llm_forward"].iloc[-1] == "computed"


def test_policy_reloads_from_its_run(tracking_uri, tmp_path, tiny_llama):
    pipeline.run(_cfg(tracking_uri, tmp_path, "reload", "classifier=logreg", "feature_set=all"))
    run = _runs(tracking_uri, "reload").iloc[0]
    policy = tracking.load_run_policy(run.run_id, tracking_uri)
    assert policy.name == "logreg" and len(policy.features) == 5
    # Identical decisions on the run's own test records (read back from its artifacts).
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(tracking_uri)
    table = pd.read_parquet(client.download_artifacts(run.run_id, "layer_features.parquet"))
    exits = pd.read_parquet(client.download_artifacts(run.run_id, "test_exits.parquet"))
    test = LayerRecords.from_frame(table[table.split == "test"].drop(columns=["split", "label"]))
    assert policy.exit_layers(test).tolist() == exits.exit_layer.tolist()
    assert {"tradeoff.parquet", "policy"} <= {a.path for a in client.list_artifacts(run.run_id)}


def test_generalization_settings(tracking_uri, tmp_path):
    inter_task = _cfg(tracking_uri, tmp_path, "gen", "+task@fit.tasks.prev=synthetic_prev_item")
    pipeline.run(inter_task)
    multi = _cfg(
        tracking_uri,
        tmp_path,
        "gen",
        "+task@fit.tasks.prev=synthetic_prev_item",
        "fit.include_own=true",
    )
    pipeline.run(multi)
    inter_model = _cfg(tracking_uri, tmp_path, "gen", "+model@fit.model=tiny_opt")
    pipeline.run(inter_model)
    runs = _runs(tracking_uri, "gen")
    assert set(runs.status) == {"FINISHED"}
    prev = "synthetic_prev_item"
    assert runs["params.fit_tasks"].tolist() == [prev, prev, "own"]
    assert runs["params.fit_model"].tolist() == ["tiny_llama", "tiny_llama", "tiny_opt"]


def test_a_fit_split_adds_training_pairs_and_reuses_every_other_trace(
    tracking_uri, tmp_path, data_dir
):
    """task.n_fit: the state head is fitted on the train sample and the fit split; the train,
    test and calibration traces of the same job without it are read back, not recomputed, and
    the test answers do not change."""
    task = [
        "task=function_vectors",
        "task.name=antonym",
        f"task.data_dir={data_dir}",
        "task.n_calibration=10",
        "risk.epsilon=0.5",
        "classifier=state",
    ]
    plain = pipeline.run(_cfg(tracking_uri, tmp_path, "fitsplit", *task))
    store = tmp_path / "traces"
    before = {p.name for p in store.glob("*.parquet")}
    more = pipeline.run(_cfg(tracking_uri, tmp_path, "fitsplit", *task, "task.n_fit=12"))
    added = {p.name for p in store.glob("*.parquet")} - before
    assert added and all(name.startswith("antonym-fit-") for name in added)
    assert more["acc_full"] == plain["acc_full"]
    runs = _runs(tracking_uri, "fitsplit")
    assert runs["params.n_fit"].tolist() == ["0", "12"]
    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(tracking_uri)
    for run, n in zip(runs.run_id, (16, 16 + 12), strict=True):
        table = pd.read_parquet(client.download_artifacts(run, "layer_features.parquet"))
        assert table[table.split == "fit"].groupby("instance").ngroups == n


@pytest.mark.parametrize(
    ("elsewhere", "fix"),
    [
        (["+model@fit.model=tiny_opt"], "drop task.n_fit, or fit.model"),
        (["+task@fit.tasks.prev=synthetic_prev_item"], "set fit.include_own=true"),
    ],
)
def test_a_fit_split_the_policy_would_not_read_is_refused(
    tracking_uri, tmp_path, data_dir, elsewhere, fix
):
    from adainfer.errors import AdaInferError

    cfg = _cfg(
        tracking_uri,
        tmp_path,
        "fitsplit_refused",
        "task=function_vectors",
        "task.name=antonym",
        f"task.data_dir={data_dir}",
        "task.n_fit=12",
        *elsewhere,
    )
    with pytest.raises(AdaInferError, match="task.n_fit adds training pairs") as err:
        pipeline.compose(cfg)
    assert fix in str(err.value)


def test_cosine_features_match_library_hidden_states(tiny_llama):
    enc = tiny_llama.tokenizer(["Q: b\nA: c\n\nQ: e\nA:"], return_tensors="pt")
    feats = probe_layers(tiny_llama.parts, enc.input_ids, enc.attention_mask)
    with torch.no_grad():
        hs = tiny_llama.model(**enc, output_hidden_states=True).hidden_states
    for layer in range(1, tiny_llama.num_layers):  # hidden_states[L] is normed; skip it
        expected = torch.cosine_similarity(hs[layer][0, -1], hs[layer - 1][0, -1], dim=0)
        assert feats["cos_hidden"][0, layer - 1] == pytest.approx(float(expected), abs=1e-5)
    assert (feats["cos_attn"][:, 0] == 0).all()
    assert (feats["cos_mlp"][:, 1:].abs() <= 1 + 1e-6).all()


@pytest.fixture
def umask_022():
    """Run under the common umask 0o022 (what group-shared caches are usually written with)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_cache_files_get_the_modes_the_umask_allows(tiny_llama, encoded, tmp_path, umask_022):
    records = extractor.evaluate(tiny_llama, SVMPolicy(), *encoded, batch_size=4).test
    path = TraceStore(tmp_path / "traces").put(_key(encoded[1]), records)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600

    def write(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(b"w")
        (folder / "key.json").write_text("{}")

    target = tmp_path / "probes" / "abc"
    cache.publish_folder(target, write)
    modes = {p.relative_to(target): stat.S_IMODE(p.stat().st_mode) for p in target.rglob("*")}
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert modes == {Path("sub"): 0o755, Path("sub/weights.bin"): 0o644, Path("key.json"): 0o644}


def test_read_only_trace_cache_warns_and_the_run_finishes(tracking_uri, tmp_path, caplog):
    # Tests run as root here, and root ignores permission bits: a chmod 0555 folder would still
    # be written. Nobody, root included, can create a folder under a regular file, so
    # traces.dir=<file>/traces is unwritable for every user.
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    cfg = _cfg(tracking_uri, tmp_path, "read_only_cache", f"traces.dir={afile / 'traces'}")
    assert cfg.traces.dir == str(afile / "traces")
    with caplog.at_level("WARNING", logger="adainfer.run.job"):
        metrics = pipeline.run(cfg)
    assert "acc" in metrics
    warned = [r.getMessage() for r in caplog.records if "is not writable" in r.getMessage()]
    assert len(warned) == 1, warned
    assert str(afile / "traces") in warned[0] and "traces.enabled=false" in warned[0]
    runs = _runs(tracking_uri, "read_only_cache")
    assert list(runs.status) == ["FINISHED"]
    assert runs["tags.trace_store"].tolist() == ["read-only"]
    assert runs["tags.llm_forward"].tolist() == ["computed"]


def test_failed_trace_write_keeps_the_records(tiny_llama, encoded, tmp_path, caplog):
    records = extractor.evaluate(tiny_llama, SVMPolicy(), *encoded, batch_size=4).test
    store = TraceStore(tmp_path / "traces")
    # The write fails whoever runs it (as on a disk that filled up during the pass): a file
    # stands where the store's folder should be.
    (tmp_path / "traces").write_text("")
    with caplog.at_level("WARNING", logger="adainfer.extract.store"):
        got = store.get_or_compute(_key(encoded[1]), lambda: records)
    assert got is records
    assert "could not store trace" in caplog.text and str(tmp_path / "traces") in caplog.text


def test_a_trace_with_hidden_states_is_reused_only_for_identical_settings(
    tiny_llama, encoded, tmp_path
):
    """A policy that reads hidden states (classifier=state) gets traces that keep them, under
    keys of their own: never a trace without them, nor one of another setting."""
    from adainfer.extract.passes import extract_records

    store = TraceStore(tmp_path)
    train, _ = encoded
    plain, states = _key(train), _key(train, hidden=HIDDEN_FORMAT)
    assert plain.digest() != states.digest()
    store.put(plain, extract_records(tiny_llama, train, 4))
    assert store.get(states) is None  # a trace without hidden states is not one with them
    first = store.get_or_compute(
        states, lambda: extract_records(tiny_llama, train, 4, hidden_states=True)
    )
    L, h = tiny_llama.num_layers, tiny_llama.hidden_size
    assert first.hidden.shape == (len(train.input_ids), L, h) and first.hidden.dtype == np.float16
    again = store.get_or_compute(states, lambda: pytest.fail("must not recompute"))
    assert np.array_equal(again.hidden, first.hidden) and np.array_equal(again.argmax, first.argmax)
    assert store.get(plain).hidden is None  # and the trace without them stays as it was
    for change in ({"shots": 3}, {"seed": 1}, {"probe": "tuned"}, {"data": "0" * 64}):
        assert store.get(_key(train, hidden=HIDDEN_FORMAT, **change)) is None, change
    # A damaged hidden column is caught by the checksum, not read.
    import pyarrow.parquet as pq

    table = pq.read_table(store.path(states))
    column = table.column("hidden").combine_chunks()
    bits = column.flatten().to_numpy().copy()
    bits[0] ^= 1
    damaged = pa.FixedSizeListArray.from_arrays(pa.array(bits, pa.uint16()), column.type.list_size)
    table = table.set_column(table.column_names.index("hidden"), "hidden", damaged)
    pq.write_table(table, store.path(states))
    assert store.get(states) is None and not store.path(states).exists()


OLD_TRACE = Path(__file__).parent / "data" / "old_trace"


def _old_trace_key(**changes) -> TraceKey:
    """The key tests/data/old_trace/ was stored under, by the code before hidden states
    (commit 60636c9): three instances, four layers, random values from seed 14."""
    fields = dict(
        model="tiny_llama",
        model_identity="tiny:old",
        task="t",
        split="train",
        shots=2,
        seed=0,
        instances=3,
        data="d" * 64,
    )
    return TraceKey(**(fields | changes))


def test_a_trace_the_older_code_stored_is_read_as_it_was_and_never_as_one_with_hidden_states(
    tmp_path, caplog
):
    import shutil

    shutil.copytree(OLD_TRACE, tmp_path, dirs_exist_ok=True)
    store = TraceStore(tmp_path)
    old = _old_trace_key()
    assert store.path(old).exists(), "the old file keeps its name: its key is unchanged"
    records = store.get(old)
    rng = np.random.default_rng(14)
    values = {k: rng.random((3, 4)).astype(np.float32) for k in RECORDED}
    argmax = rng.integers(0, 50, (3, 4))
    assert np.array_equal(records.argmax, argmax) and records.hidden is None
    for name in RECORDED:
        assert np.array_equal(records.values[name], values[name])
    # Asked with hidden states, the same setting misses it ...
    states = _old_trace_key(hidden=HIDDEN_FORMAT)
    assert store.get(states) is None
    # ... and even under that key's file name, the old file is refused, not misread.
    shutil.copy(store.path(old), store.path(states))
    assert store.get(states) is None and not store.path(states).exists()
    assert "unusable" in caplog.text
