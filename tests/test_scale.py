"""Jobs side by side: a shared trace store, locks that die with their holder, resumable grids.

Real run.py subprocesses on one MLflow sqlite store, as a sweep spread over processes or
machines would run them.
"""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import torch
from conftest import QUIET, compose_cfg
from omegaconf import OmegaConf
from test_faults import _statuses, runs, start_job

from adainfer.compose.resume import config_hash
from adainfer.extract.extractor import prepare
from adainfer.extract.passes import extract_records
from adainfer.files import exclusive
from adainfer.run import job as pipeline
from adainfer.tasks import RuleTask

# One LLM pass of several seconds on 2 CPU cores (8 layers of 384 over 400 5-shot prompts), so
# the second job reaches the trace while the first is still computing it.
SLOW = [
    "model=tiny_llama",
    "model.num_layers=8",
    "model.hidden_size=384",
    "model.intermediate_size=1536",
    "model.num_heads=6",
    "task=sst2",
    "task.n_train=400",
    "task.n_test=20",
    "shots=5",
]
WAITED = "waiting for another job computing trace"


def _output(tmp_path, name: str) -> str:
    return (tmp_path / f"{name}.out").read_text() + (tmp_path / f"{name}.err").read_text()


def test_two_workers_on_one_trace_run_one_llm_pass_and_both_finish(tmp_path):
    traces = tmp_path / "traces"
    args = [*SLOW, "mlflow.experiment=shared", f"traces.dir={traces}"]
    jobs = [start_job(args, tmp_path, name=f"worker{i}") for i in range(2)]
    codes = [job.wait(timeout=600) for job in jobs]
    logs = [_output(tmp_path, f"worker{i}") for i in range(2)]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    found = runs(tmp_path, "shared")
    assert found.status.tolist() == ["FINISHED", "FINISHED"]
    assert sorted(found["tags.llm_forward"]) == ["computed", "trace_store"]
    assert len(list(traces.glob("*.parquet"))) == 2  # train and test: written once each
    # Not one job after the other by luck of timing: one of them did wait on the other's lock.
    assert sum(WAITED in log for log in logs) == 1, "no job waited: the test did not overlap"
    assert found["metrics.acc"].nunique() == 1


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path):
    lock = tmp_path / ".locks" / "key.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from adainfer.files import exclusive\n"
            f"with exclusive(Path({str(lock)!r}), 'x'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: the holder cannot release anything itself
    holder.wait()
    began = time.monotonic()
    with exclusive(lock, "x") as held:
        assert held
    assert time.monotonic() - began < 5


# --- resumable grids -------------------------------------------------------------------------

SWEEP = ["-m", *SLOW, "task.n_train=200", "seed=0,1,2", "mlflow.experiment=grid"]
SKIPPED = "already FINISHED this config"


def _sweep(folder, *extra: str, name: str = "sweep"):
    folder.mkdir(exist_ok=True)
    args = [*SWEEP, *extra, f"traces.dir={folder / 'traces'}", f"hydra.sweep.dir={folder / 'm'}"]
    return start_job(args, folder, name=name)


def _wait_second_job_running(proc, folder, timeout: float = 600) -> None:
    """Block until the first job's run is FINISHED and the second's RUNNING (its LLM pass)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, _output(folder, "sweep")[-3000:]
        if sorted(_statuses(folder)) == ["FINISHED", "RUNNING"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the second job did not start within {timeout} s")


def _by_hash(found) -> dict[str, dict[str, float]]:
    done = found[found.status == "FINISHED"]
    metrics = [c for c in found.columns if c.startswith("metrics.")]
    hashes = done["tags.adainfer.config_hash"]
    assert hashes.is_unique, "a config ran to the end twice"
    return {h: row[metrics].to_dict() for h, (_, row) in zip(hashes, done.iterrows(), strict=True)}


def test_a_killed_sweep_resumes_where_it_stopped_with_a_clean_sweeps_metrics(tmp_path):
    clean = _sweep(tmp_path / "clean")
    assert clean.wait(timeout=900) == 0, _output(tmp_path / "clean", "sweep")[-3000:]
    expected = _by_hash(runs(tmp_path / "clean", "grid"))
    assert len(expected) == 3

    folder = tmp_path / "killed"
    first = _sweep(folder)
    _wait_second_job_running(first, folder)
    first.kill()  # kill -9 in the second job: the sweep's process dies without a word
    first.wait()
    before = runs(folder, "grid")
    assert sorted(before.status) == ["FINISHED", "RUNNING"]  # killed mid-job, not after it
    killed = before.run_id[before.status == "RUNNING"].item()

    again = _sweep(folder, "resume=true", name="resumed")
    assert again.wait(timeout=900) == 0, _output(folder, "resumed")[-3000:]
    log = _output(folder, "resumed")
    assert log.count(SKIPPED) == 1  # seed=0: no model, no LLM pass, no new run
    after = runs(folder, "grid").set_index("run_id")
    assert len(after) == 4  # the two of the killed sweep and one per point it had not finished
    assert after.loc[killed, "status"] == "KILLED"
    assert "is gone" in after.loc[killed, "tags.adainfer.end_reason"]
    assert "RUNNING" not in set(after.status)
    assert _by_hash(after.reset_index()) == expected


QUICK_JOB = ["model=tiny_llama", "shots=2", "task.n_train=12", "task.n_test=8", "classifier=gap"]


def test_config_hash_ignores_where_things_are_kept_only():
    base = config_hash(compose_cfg(QUICK_JOB))
    same = ["mlflow.experiment=x", "traces.dir=/elsewhere", "traces.enabled=false"]
    same += ["stage=decide", "resume=true", "mlflow.stale_after_s=5"]
    for override in same:
        assert config_hash(compose_cfg([*QUICK_JOB, override])) == base, override
    for override in ["shots=3", "seed=1", "batch_size=4", "model=tiny_opt", "task.n_test=9"]:
        assert config_hash(compose_cfg([*QUICK_JOB, override])) != base, override


def test_generation_settings_count_only_for_a_job_that_generates():
    """Jobs that do not generate hash as before generation existed (their grids still resume):
    the hash of their config less task.generate, task.max_new_tokens, kv_fill and
    risk.answers / risk.answer_grid."""
    for job in (["task=sst2"], ["task=rules"], ["task=squad"]):  # rules: a list of names
        cfg = compose_cfg([*QUICK_JOB, *job])
        before = OmegaConf.to_container(cfg)
        before.pop("kv_fill")
        before["task"].pop("generate"), before["task"].pop("max_new_tokens")
        before["risk"].pop("answers"), before["risk"].pop("answer_grid")
        assert config_hash(cfg) == config_hash(OmegaConf.create(before)), job
        for override in ["kv_fill=recompute", "task.max_new_tokens=3", "risk.answer_grid=5"]:
            assert config_hash(compose_cfg([*QUICK_JOB, *job, override])) == config_hash(cfg)
    squad = [*QUICK_JOB, "task=squad", "task.generate=true"]
    generating = config_hash(compose_cfg(squad))
    assert generating != config_hash(compose_cfg([*QUICK_JOB, "task=squad"]))
    for override in ["kv_fill=recompute", "task.max_new_tokens=3", "risk.answer_grid=5"]:
        assert config_hash(compose_cfg([*squad, override])) != generating, override


def hashed_without(cfg, node: str, *keys: str) -> str:
    """The hash ``cfg`` had before ``node``'s ``keys`` existed: the same config without them."""
    before = OmegaConf.to_container(cfg)
    for key in keys:
        before[node].pop(key, None)
    return config_hash(OmegaConf.create(before))


def test_a_fit_split_counts_only_when_asked_for():
    """task.n_fit=0 (the default) hashes as before the key existed; any other value counts."""
    for job in (["task=sst2"], ["task=ag_news"]):
        cfg = compose_cfg([*QUICK_JOB, *job])
        assert (cfg.task.n_fit, cfg.task.test_from) == (0, "test")
        assert config_hash(cfg) == hashed_without(cfg, "task", "n_fit", "test_from", "train_rows")
        assert config_hash(compose_cfg([*QUICK_JOB, *job, "task.n_fit=5"])) != config_hash(cfg)


def test_sst2_train_rows_count_only_when_not_the_default():
    """task.train_rows=phrases (SST-2's default) hashes as before the key existed; sentences
    is another train split, so another hash."""
    cfg = compose_cfg([*QUICK_JOB, "task=sst2"])
    assert cfg.task.train_rows == "phrases"
    assert config_hash(cfg) == hashed_without(cfg, "task", "train_rows", "test_from")
    sentences = compose_cfg([*QUICK_JOB, "task=sst2", "task.train_rows=sentences"])
    assert config_hash(sentences) != config_hash(cfg)


def test_a_test_split_held_out_of_train_counts_only_when_asked_for():
    """task.test_from=test (the default) hashes as before the key existed; train is another
    test split, so another hash."""
    cfg = compose_cfg([*QUICK_JOB, "task=ag_news"])
    assert cfg.task.test_from == "test"
    assert config_hash(cfg) == hashed_without(cfg, "task", "test_from", "n_fit")
    held = compose_cfg([*QUICK_JOB, "task=ag_news", "task.test_from=train"])
    assert config_hash(held) != config_hash(cfg)


def test_a_read_price_counts_only_when_set():
    """classifier.read_price=null (a probe priced at its FLOPs) hashes as before the key
    existed; a price in layers can choose another schedule, so another hash."""
    auto = [*QUICK_JOB, "classifier=svm", "classifier.schedule=auto"]
    cfg = compose_cfg(auto)
    assert cfg.classifier.read_price is None
    assert config_hash(cfg) == hashed_without(cfg, "classifier", "read_price")
    assert config_hash(compose_cfg([*auto, "classifier.read_price=0.7"])) != config_hash(cfg)


def test_resume_returns_the_finished_runs_metrics_and_opens_no_run(tracking_uri, tmp_path):
    at = [f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=resume_in_process"]
    first = pipeline.run(compose_cfg([*QUICK_JOB, *at, f"traces.dir={tmp_path / 'a'}"]))
    again = pipeline.run(
        compose_cfg([*QUICK_JOB, *at, f"traces.dir={tmp_path / 'b'}", "resume=true"])
    )
    assert {key: again[key] for key in first} == first
    assert not (tmp_path / "b").exists()  # skipped before any trace was looked for
    mlflow.set_tracking_uri(tracking_uri)
    assert len(mlflow.search_runs(experiment_names=["resume_in_process"])) == 1
    pipeline.run(compose_cfg([*QUICK_JOB, *at, "seed=1", "resume=true"]))  # another config
    assert len(mlflow.search_runs(experiment_names=["resume_in_process"])) == 2


# --- launchers -------------------------------------------------------------------------------

GRID = ["-m", "model=tiny_llama", "task.n_train=16", "task.n_test=8", "shots=0,2"]


def test_a_submitit_local_sweep_logs_what_the_basic_launcher_logs(tmp_path):
    for name, launcher in [("basic", []), ("submitit", ["hydra/launcher=submitit_local"])]:
        folder = tmp_path / name
        folder.mkdir()
        args = [*GRID, *launcher, f"traces.dir={folder / 'traces'}"]
        args += [f"hydra.sweep.dir={folder / 'm'}", "mlflow.experiment=launch"]
        proc = start_job(args, folder)
        assert proc.wait(timeout=900) == 0, _output(folder, "job")[-3000:]
    basic, submitit = (runs(tmp_path / name, "launch") for name in ("basic", "submitit"))
    assert set(basic.status) == set(submitit.status) == {"FINISHED"}
    assert len(basic) == len(submitit) == 2
    # Each submitit job ran in its own process, not in the launcher's.
    assert submitit["tags.adainfer.pid"].nunique() == 2
    assert basic["tags.adainfer.pid"].nunique() == 1
    assert _by_hash(basic) == _by_hash(submitit)


# --- data parallel ---------------------------------------------------------------------------


def _same_records(a, b) -> None:
    assert a.values.keys() == b.values.keys()
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key]), key
    for field in ("argmax", "gold", "seq_len", "hidden"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.slow
def test_two_data_parallel_workers_give_the_records_of_one(tiny_llama, capfd):
    """trainer.devices=2 on the CPU: Lightning spawns two DDP workers, each runs half of the
    batches, and the records come back in the prompts' order, equal to one device's to the bit
    (the same batches: each worker gets whole batches, padded as on one device). The model has
    run with transformers' output capturing first, as in a job that fitted a tuned lens or
    generated: the hooks that leaves on it must not stop it from reaching the workers."""
    task = RuleTask(n_train=42, n_test=4)  # 6 batches of 8 (the last one short)
    train, _ = prepare(task, task.load(), tiny_llama, shots=3, seed=0)
    with torch.no_grad():
        tiny_llama.model(torch.tensor([train.input_ids[0]]), output_hidden_states=True)
    cpu = QUIET | {"accelerator": "cpu"}
    one = extract_records(tiny_llama, train, 8, cpu | {"devices": 1}, hidden_states=True)
    capfd.readouterr()
    two = extract_records(tiny_llama, train, 8, cpu | {"devices": 2}, hidden_states=True)
    spawned = capfd.readouterr()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in spawned.out + spawned.err  # a second worker ran
    assert one.num_instances == two.num_instances == 42
    _same_records(one, two)
