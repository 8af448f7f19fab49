"""Jobs that end badly: signals, kill -9, two jobs creating one store, a store that is not there.

Real run.py subprocesses on real MLflow sqlite stores. Nothing may stay RUNNING.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import mlflow
import pytest
from conftest import REPO, paper
from mlflow import MlflowClient
from test_cli import run_py

from adainfer.run import tracking

# The job is interrupted 2 s into its LLM pass, which must last well beyond that on any machine:
# tiny_llama at GPT-2-small width (12 layers of 768) over 800 5-shot sst2 prompts takes minutes
# on 2 CPU cores. At its default width (4 x 64) the pass took under 2 s on CI's machine, so the
# signal arrived after the job had ended.
BUSY = [
    "model=tiny_llama",
    "model.num_layers=12",
    "model.hidden_size=768",
    "model.intermediate_size=3072",
    "model.num_heads=12",
    "task=sst2",
    "task.n_train=800",
    "task.n_test=20",
    "shots=5",
]
QUICK = ["model=tiny_llama", "task.n_train=8", "task.n_test=4", "shots=0"]


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def start_job(args: list[str], tmp_path, name: str = "job") -> subprocess.Popen:
    """run.py in the background, its output in files under ``tmp_path``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": _uri(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "ADAINFER_DATA_DIR": os.environ.get(
            "ADAINFER_DATA_DIR", str(REPO.parent / "shared" / "data")
        ),
    }
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "run.py"),
            *paper(args),
            f"hydra.run.dir={tmp_path / 'outputs' / name}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=open(tmp_path / f"{name}.out", "w"),  # noqa: SIM115 - the child owns it
        stderr=open(tmp_path / f"{name}.err", "w"),  # noqa: SIM115
    )


def runs(tmp_path, experiment: str):
    mlflow.set_tracking_uri(_uri(tmp_path))
    return mlflow.search_runs(experiment_names=[experiment])


def _statuses(tmp_path) -> list[str]:
    """The runs' statuses, read without MLflow: opening a store that a job is creating would
    race with it (what test_two_jobs_creating_one_store_both_finish is about)."""
    path = tmp_path / "mlflow.db"
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return [status for (status,) in db.execute("SELECT status FROM runs")]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


def wait_running(proc: subprocess.Popen, tmp_path, experiment: str, timeout: float = 300):
    """Block until the job's run is RUNNING (the LLM pass starts right after), then 2 s more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "job.err").read_text()[-3000:]
        if "RUNNING" in _statuses(tmp_path):
            time.sleep(2)
            assert proc.poll() is None, "the job ended before it could be interrupted"
            return
        time.sleep(0.5)
    raise AssertionError(f"no RUNNING run within {timeout} s")


def ended_within(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_llm_pass_ends_the_job_and_closes_the_run(signum, status, tmp_path):
    traces = tmp_path / "traces"
    experiment = "signalled"
    proc = start_job([*BUSY, f"mlflow.experiment={experiment}", f"traces.dir={traces}"], tmp_path)
    wait_running(proc, tmp_path, experiment)
    proc.send_signal(signum)
    rc = ended_within(proc, 10)
    err = (tmp_path / "job.err").read_text()
    assert rc == status, f"rc={rc} (None: still running 10 s after the signal)\n{err[-3000:]}"
    assert f"adainfer: stopped by {signal.Signals(signum).name}" in err
    assert "Traceback" not in err
    found = runs(tmp_path, experiment)
    assert found.status.tolist() == ["KILLED"]
    assert found["tags.adainfer.end_reason"].tolist() == [signal.Signals(signum).name]
    written = [p for p in traces.glob("*") if p.name != ".locks"] if traces.exists() else []
    assert not written, f"a partial trace was written: {written}"  # .locks: empty lock files


def test_run_of_a_killed_process_is_closed_by_the_next_job(tmp_path):
    experiment = "dead"
    proc = start_job([*BUSY, f"mlflow.experiment={experiment}", "traces.enabled=false"], tmp_path)
    wait_running(proc, tmp_path, experiment)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    (dead,) = runs(tmp_path, experiment).run_id
    done = run_py([*QUICK, f"mlflow.experiment={experiment}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = runs(tmp_path, experiment).set_index("run_id")
    assert found.loc[dead, "status"] == "KILLED"
    assert f"process {proc.pid} on " in found.loc[dead, "tags.adainfer.end_reason"]
    assert (found.status == "FINISHED").sum() == 1


def test_runs_left_running_are_closed_only_when_dead(tmp_path):
    """Another host: judged by its heartbeat. This host: by pid and process start time."""
    uri = _uri(tmp_path)
    tracking.open_store(uri, "liveness")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("liveness").experiment_id
    now = time.time()
    own = tracking._own_tags()

    def running(**tags) -> str:
        return client.create_run(exp, tags={k: str(v) for k, v in tags.items()}).info.run_id

    far = {tracking.HOST: "elsewhere", tracking.PID: 1, tracking.PID_STARTED: 1.0}
    stale = running(**far, **{tracking.HEARTBEAT: now - 3600})
    fresh = running(**far, **{tracking.HEARTBEAT: now - 60})
    alive = running(**own)  # this very process
    reused = running(**own | {tracking.PID_STARTED: float(own[tracking.PID_STARTED]) - 100})
    foreign = client.create_run(exp).info.run_id  # no liveness tags: not ours to judge

    tracking.open_store(uri, "liveness", stale_after_s=600)
    status = {run_id: client.get_run(run_id).info.status for run_id in (stale, fresh, alive)}
    status |= {run_id: client.get_run(run_id).info.status for run_id in (reused, foreign)}
    assert status == {
        stale: "KILLED",
        fresh: "RUNNING",
        alive: "RUNNING",
        reused: "KILLED",
        foreign: "RUNNING",
    }
    assert "no heartbeat from elsewhere" in client.get_run(stale).data.tags[tracking.END_REASON]
    assert "another process" in client.get_run(reused).data.tags[tracking.END_REASON]


def test_two_jobs_creating_one_store_both_finish(tmp_path):
    """Before the store was created under a lock, one attempt was enough: 3 of 3 failed."""
    jobs = [start_job([*QUICK, f"seed={i}"], tmp_path, name=f"job{i}") for i in range(2)]
    codes = [job.wait(timeout=600) for job in jobs]
    errors = [(tmp_path / f"job{i}.err").read_text()[-2000:] for i in range(2)]
    assert codes == [0, 0], errors
    assert runs(tmp_path, "adainfer").status.tolist() == ["FINISHED", "FINISHED"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///{tmp}/a_file/mlflow.db", "cannot be created or written: {tmp}/a_file is not"),
        (
            "http://127.0.0.1:{port}",
            "the MLflow tracking server at http://127.0.0.1:{port} did not",
        ),
    ],
)
def test_unusable_store_fails_fast_before_the_model_loads(uri, expected, tmp_path, data_dir):
    """Before the model loads: with an empty model cache the default (GGUF) model would be
    converted into it first ("converting ...", a safetensors folder). Fast: not after MLflow's
    own client has retried for minutes (the time bound is loose, for a loaded machine)."""
    (tmp_path / "a_file").write_text("not a folder")
    cache = tmp_path / "cache"
    port = _free_port()  # nothing listens there
    uri, expected = (s.format(tmp=tmp_path, port=port) for s in (uri, expected))
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), f"hydra.run.dir={tmp_path / 'outputs'}"],
        cwd=tmp_path,
        # The default job, as the README runs it (its SST-2 from the shared data).
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "ADAINFER_CACHE_DIR": str(cache),
            "HF_HUB_OFFLINE": "1",
            "ADAINFER_DATA_DIR": str(data_dir),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr
    assert proc.stderr.count("adainfer: error:") == 1 and "Traceback" not in proc.stderr
    assert "converting" not in proc.stderr + proc.stdout
    assert not list(cache.rglob("*.safetensors")), "the model was loaded"
    assert elapsed < 90, f"took {elapsed:.0f} s"


def test_an_unreachable_tracking_server_stops_a_worker_before_its_model_loads(tmp_path, data_dir):
    """``mlflow.tracking_uri=`` a closed port: one message naming MLFLOW_TRACKING_URI, exit 2,
    and no model loaded: with an empty model cache, the default (GGUF) model would be converted
    into it first ("converting ...", a safetensors folder), which takes tens of seconds."""
    cache = tmp_path / "cache"
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), f"mlflow.tracking_uri={url}"]
        + [f"hydra.run.dir={tmp_path / 'outputs'}"],
        cwd=tmp_path,
        env={
            **env,
            "ADAINFER_CACHE_DIR": str(cache),
            "HF_HUB_OFFLINE": "1",
            "ADAINFER_DATA_DIR": str(data_dir),  # the default job's SST-2
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the MLflow tracking server at {url} did not answer" in proc.stderr
    assert "MLFLOW_TRACKING_URI" in proc.stderr
    assert proc.stderr.count("adainfer: error:") == 1 and "Traceback" not in proc.stderr
    assert "converting" not in proc.stderr + proc.stdout
    assert not list(cache.rglob("*.safetensors")), "the model was loaded"
    assert elapsed < 60, f"took {elapsed:.0f} s"  # MLflow's own client retries for minutes
