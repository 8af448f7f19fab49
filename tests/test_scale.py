"""Jobs side by side: a shared trace store, locks that die with their holder, resumable grids.

Real run.py subprocesses on one MLflow sqlite store, as a sweep spread over processes or
machines would run them.
"""

from __future__ import annotations

import subprocess
import sys
import time

from test_faults import runs, start_job

from adainfer.files import exclusive

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
