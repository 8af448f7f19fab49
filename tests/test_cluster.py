"""Sweeps as a cluster runs them: a real Ray cluster, one real tracking server on PostgreSQL.

A local Ray head (``ray start --head``) runs the jobs of ``hydra/launcher=ray_cluster``; a real
PostgreSQL (``pgserver``'s binaries) backs a real ``mlflow server`` that the jobs of the Ray and
the submitit launchers log to over HTTP. Each sweep must log, per grid point, what the basic
launcher logs in-process to a sqlite file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import REPO, paper
from test_scale import _by_hash

GRID = ["-m", "model=tiny_llama", "task.n_train=16", "task.n_test=8", "shots=2"]
GRID += ["classifier=svm,gap", "mlflow.experiment=cluster"]
ENV = {
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "ADAINFER_DATA_DIR": os.environ.get("ADAINFER_DATA_DIR", str(REPO.parent / "shared" / "data")),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until ``ready()``; the process must not die meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        if ready():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sweep(folder: Path, *extra: str, tracking_uri: str) -> subprocess.Popen:
    """``run.py -m`` over :data:`GRID`, logging to ``tracking_uri``, output under ``folder``."""
    folder.mkdir(parents=True)
    args = [*GRID, *extra, f"traces.dir={folder / 'traces'}", f"hydra.sweep.dir={folder / 'm'}"]
    env = {**os.environ, **ENV, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *paper(args)],
        cwd=folder,
        env=env,
        stdout=open(folder / "out", "w"),  # noqa: SIM115 - the child owns it
        stderr=open(folder / "err", "w"),  # noqa: SIM115
    )


def finished(proc: subprocess.Popen, folder: Path, tracking_uri: str):
    """The runs of the sweep ``proc`` (which must succeed) in ``tracking_uri``."""
    assert proc.wait(timeout=600) == 0, (folder / "err").read_text()[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.search_runs(experiment_names=["cluster"])
    return found[found["tags.sweep_dir"] == str(folder / "m")]


class Reference:
    """The grid through the basic launcher (one process, a sqlite store), started at once and
    waited for when first asked: it runs while the servers start."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.uri = folder / "sweep", f"sqlite:///{folder / 'mlflow.db'}"
        self.proc = sweep(self.folder, tracking_uri=self.uri)
        self.metrics: dict | None = None

    def by_hash(self) -> dict:
        if self.metrics is None:
            found = finished(self.proc, self.folder, self.uri)
            assert len(found) == 2 and set(found.status) == {"FINISHED"}
            self.metrics = _by_hash(found)
        return self.metrics


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    reference = Reference(tmp_path_factory.mktemp("basic"))
    yield reference
    if reference.proc.poll() is None:
        _stop(reference.proc)


@pytest.fixture(scope="module")
def tracking_server():
    """A real ``mlflow server`` on a real PostgreSQL, serving artifacts from a folder: its URL."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (dev extra) is not installed")
    pytest.importorskip("psycopg2", reason="psycopg2-binary (dev extra) is not installed")
    # A short folder: PostgreSQL listens on a unix socket inside it (paths of <= 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="adainfer-pg-"))
    postgres = pgserver.get_server(root / "db", cleanup_mode="stop")
    # SQLAlchemy 2's default postgresql driver is psycopg 3; the binary wheel here is psycopg2.
    store = postgres.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    port = _free_port()
    log = root / "mlflow-server.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store]
        + ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(log, "w"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        _wait("mlflow server", healthy, server, log)
        yield url
    finally:
        _stop(server)
        postgres.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A local Ray cluster (``ray start --head --block``, stopped by its pid): its address."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray, "the ray CLI is not installed (hydra-ray-launcher, dev extra)"
    folder = tmp_path_factory.mktemp("ray")
    port = _free_port()
    log = folder / "head.log"
    # Ray workers get the environment of the node's `ray start`, not the driver's.
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
        + ["--include-dashboard=false", "--disable-usage-stats"],
        env={**os.environ, **ENV},
        stdout=open(log, "w"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    try:
        _wait("ray head", lambda: "Ray runtime started" in log.read_text(), head, log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head)  # SIGTERM: `ray start --block` stops the processes it started


@pytest.mark.slow
def test_a_ray_sweep_on_the_postgres_tracking_server_logs_what_the_basic_launcher_logs(
    tmp_path, basic, tracking_server, ray_head
):
    folder = tmp_path / "ray"
    # The jobs run in Ray's worker processes, which do not see this environment: the tracking
    # server goes with the job's config.
    launcher = ["hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}"]
    proc = sweep(
        folder, *launcher, f"mlflow.tracking_uri={tracking_server}", tracking_uri=tracking_server
    )
    found = finished(proc, folder, tracking_server)
    assert len(found) == 2 and set(found.status) == {"FINISHED"}
    assert "Connected to Ray cluster" in (folder / "err").read_text()
    assert str(proc.pid) not in set(found["tags.adainfer.pid"])  # not run by the launcher
    assert _by_hash(found) == basic.by_hash()
    # The artifacts went through the server to its artifact folder.
    run_id = found.run_id.iloc[0]
    artifacts = mlflow.MlflowClient(tracking_server).list_artifacts(run_id)
    assert "config.yaml" in {a.path for a in artifacts}


@pytest.mark.slow
def test_a_submitit_sweep_on_the_postgres_tracking_server_logs_what_the_basic_launcher_logs(
    tmp_path, basic, tracking_server
):
    folder = tmp_path / "submitit"
    proc = sweep(folder, "hydra/launcher=submitit_local", tracking_uri=tracking_server)
    found = finished(proc, folder, tracking_server)
    assert len(found) == 2 and set(found.status) == {"FINISHED"}
    assert found["tags.adainfer.pid"].nunique() == 2  # one process per job
    assert _by_hash(found) == basic.by_hash()
