"""MLflow bookkeeping: one run per job, params up front, metrics and artifacts at the end.

The tracking store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory,
browsable with ``mlflow ui``); ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri=`` override it.

Nothing is left RUNNING:

- :func:`open_store` is called before the model loads. It checks the store in seconds (a sqlite
  file that cannot be written, a server that does not answer its ``/health``), creates a new
  sqlite store under a lock on its folder (MLflow's table creation is not safe for two processes
  at once) and retries a failed open a few times.
- A run ends FINISHED, FAILED on an exception, or KILLED when a signal ended the job
  (:mod:`adainfer.run.interrupts`), with the tag ``adainfer.end_reason`` saying why.
- A process that dies without a word (kill -9, a lost node) cannot close its run. Each run
  therefore carries the tags ``adainfer.host``, ``adainfer.pid`` and ``adainfer.pid_started`` (the
  process start time, so a reused pid is not mistaken for the job) and a daemon thread refreshes
  ``adainfer.heartbeat`` (unix seconds) every :data:`HEARTBEAT_S`. When a job opens an experiment,
  every RUNNING run of it whose process is gone (same host) or whose heartbeat is older than
  ``stale_after_s`` (other hosts) is closed as KILLED with the reason in ``adainfer.end_reason``.
  Runs without these tags (from elsewhere) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric

from adainfer.errors import AdaInferError
from adainfer.run.interrupts import Interrupted

log = logging.getLogger(__name__)

HOST, PID, PID_STARTED = "adainfer.host", "adainfer.pid", "adainfer.pid_started"
HEARTBEAT, END_REASON = "adainfer.heartbeat", "adainfer.end_reason"
HEARTBEAT_S = 30.0  # how often a running job refreshes its heartbeat tag
STALE_AFTER_S = 600.0  # a run on another host with an older heartbeat is dead
OPEN_ATTEMPTS = 4  # tries to open a store (two jobs creating a fresh sqlite file race)
CHECK_TIMEOUT_S = 5.0  # for a tracking server's /health
# The MLflow 3 UI opens an experiment of this kind on its runs table ("Model training"), not on
# the GenAI traces overview.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def _fix() -> str:
    return "set mlflow.tracking_uri=... (or MLFLOW_TRACKING_URI) to a store you can write to"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _check_sqlite(path: Path) -> None:
    """A sqlite store needs its file and folder writable (journal files). MLflow creates missing
    folders, so the nearest existing one must be writable."""
    folder = path.parent.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        problem = f"{folder} is not a folder"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"folder {folder} is not writable"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problem = "the file is not writable"
    else:
        return
    raise AdaInferError(
        f"the MLflow sqlite store {path} cannot be created or written: {problem}",
        f"make the folder writable, or {_fix()}",
    )


def _check_server(uri: str) -> None:
    """A tracking server answers ``/health`` within seconds (MLflow's own client would retry
    for minutes first). Any HTTP answer counts: a proxy may want credentials MLflow has."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S)
    except requests.RequestException as err:
        raise AdaInferError(
            f"the MLflow tracking server at {uri} did not answer ({type(err).__name__})",
            "start it (mlflow server --backend-store-uri ... --port ...) or point "
            "MLFLOW_TRACKING_URI / mlflow.tracking_uri at the right address",
        ) from None


@contextmanager
def _folder_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on the sqlite file's folder: one process creates the tables at a
    time. Nothing is left behind; where ``fcntl`` is missing, the retries remain."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
    fd = os.open(path.parent.resolve(), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_store(
    tracking_uri: str | None, experiment: str, stale_after_s: float = STALE_AFTER_S
) -> str:
    """Point MLflow at the store, check it, set ``experiment`` (created if new) and close its
    runs whose process died (see the module docstring). Returns the experiment id. A store that
    cannot be used is an :class:`AdaInferError` within seconds, so call this before loading
    anything expensive."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    sqlite = _sqlite_path(uri)
    if sqlite is not None:
        _check_sqlite(sqlite)
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            with _folder_lock(sqlite):
                opened = mlflow.set_experiment(experiment)
                if EXPERIMENT_KIND not in opened.tags:  # a kind set by hand is kept
                    mlflow.MlflowClient().set_experiment_tag(
                        opened.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING
                    )
                experiment_id = opened.experiment_id
            break
        except Exception as err:  # noqa: BLE001 - any store failure is the same user problem
            if attempt == OPEN_ATTEMPTS:
                raise AdaInferError(
                    f"cannot open the MLflow tracking store {uri!r}: {err}", _fix()
                ) from None
            log.warning("opening the MLflow store failed (%s); trying again", err)
            time.sleep(random.uniform(0.2, 1.5))
    close_dead_runs(experiment_id, stale_after_s)
    return experiment_id


def _own_tags() -> dict[str, str]:
    return {
        HOST: socket.gethostname(),
        PID: str(os.getpid()),
        PID_STARTED: f"{psutil.Process().create_time():.2f}",
        HEARTBEAT: f"{time.time():.0f}",
    }


def why_dead(tags: dict[str, str], stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the run with these tags cannot be running any more, or None if it may be."""
    if not {HOST, PID, PID_STARTED, HEARTBEAT} <= tags.keys():
        return None  # not started by this code: no way to tell
    host, pid = tags[HOST], int(tags[PID])
    if host == socket.gethostname():
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return f"process {pid} on {host} is gone"
        except psutil.Error:
            return None  # exists, not ours to inspect
        if abs(started - float(tags[PID_STARTED])) > 1.0:
            return f"process {pid} on {host} is gone (the pid now belongs to another process)"
        return None
    age = time.time() - float(tags[HEARTBEAT])
    if age > stale_after_s:
        return f"no heartbeat from {host} for {age:.0f} s (stale after {stale_after_s:.0f} s)"
    return None


def close_dead_runs(experiment_id: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Close the RUNNING runs of the experiment whose job died as KILLED, at their last
    heartbeat, with the reason in ``adainfer.end_reason``. Returns their ids."""
    client = MlflowClient()
    closed, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], "attributes.status = 'RUNNING'", page_token=token
        )
        for run in page:
            reason = why_dead(run.data.tags, stale_after_s)
            if reason is None:
                continue
            client.set_tag(run.info.run_id, END_REASON, reason)
            last_beat = int(float(run.data.tags[HEARTBEAT]) * 1000)
            client.set_terminated(run.info.run_id, "KILLED", end_time=last_beat)
            log.warning(
                "MLflow run %s was left RUNNING: %s; closed as KILLED", run.info.run_id, reason
            )
            closed.append(run.info.run_id)
        token = page.token
        if not token:
            return closed


def finished_run(experiment_id: str, tag: str, value: str):
    """The latest FINISHED run of the experiment whose tag ``tag`` is ``value``, or None."""
    found = MlflowClient().search_runs(
        [experiment_id],
        f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


class _Heartbeat:
    """A daemon thread refreshing the run's heartbeat tag until stopped."""

    def __init__(self, run_id: str, every_s: float = HEARTBEAT_S) -> None:
        self.run_id, self.every_s = run_id, every_s
        self.client = MlflowClient()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="adainfer-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(self.every_s):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, f"{time.time():.0f}")
            except Exception as err:  # noqa: BLE001 - a missed beat is not worth failing the job
                log.debug("heartbeat of run %s failed: %s", self.run_id, err)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def _end(status: str, reason: str | None = None) -> None:
    if reason is not None:
        mlflow.set_tag(END_REASON, reason)
    mlflow.end_run(status)


@contextmanager
def tracked_run(
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict | None = None,
    tracking_uri: str | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run with its params and liveness tags; it ends FINISHED on success, KILLED when
    a signal ended the job (:class:`~adainfer.run.interrupts.Interrupted`), FAILED on any other
    exception."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as err:  # noqa: BLE001 - any store failure is the same user problem
        raise AdaInferError(
            f"cannot open the MLflow tracking store {mlflow.get_tracking_uri()!r}: {err}", _fix()
        ) from None
    run = mlflow.start_run(run_name=run_name, tags=(tags or {}) | _own_tags(), nested=nested)
    heartbeat = _Heartbeat(run.info.run_id)
    try:
        mlflow.log_params(params)
        yield run
    except Interrupted as err:
        heartbeat.stop()
        _end("KILLED", err.reason)
        raise
    except BaseException as err:
        heartbeat.stop()
        _end("FAILED", type(err).__name__)
        raise
    heartbeat.stop()
    _end("FINISHED")


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_folder(folder: Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(folder), artifact_path)


def log_jsonl(rows: list[dict], artifact_file: str) -> None:
    """Rows as a JSON Lines artifact (one object a line)."""
    mlflow.log_text("".join(json.dumps(row) + "\n" for row in rows), artifact_file)


def log_layer_curve(key: str, values) -> None:
    """One metric per layer, with the layer number (from 1) as its step."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
    MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=metrics)


def log_tables(tables: dict[str, pd.DataFrame], config_yaml: str) -> None:
    """The resolved config and data tables (Parquet) as run artifacts."""
    mlflow.log_text(config_yaml, "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in tables.items():
            path = Path(tmp) / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            mlflow.log_artifact(str(path))


def _policy_folder(run_id: str, tracking_uri: str | None) -> Path:
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="policy")
    except Exception as err:  # noqa: BLE001 - unknown run, no artifact, store unreachable
        raise AdaInferError(
            f"cannot fetch the policy of MLflow run {run_id!r}: {err}",
            "pass the id of a finished adainfer run (see `mlflow ui` or scripts/show_runs.py)",
        ) from None
    return Path(folder)


def load_run_policy(run_id: str, tracking_uri: str | None = None):
    """The fitted exit policy a run saved (its ``policy/`` artifact), ready to use."""
    from adainfer.decide.policies import load_policy

    return load_policy(_policy_folder(run_id, tracking_uri))


def load_run_probe(run_id: str, tracking_uri: str | None = None):
    """The probe the run's policy reads layers through: its tuned lens, or the logit lens."""
    from adainfer.llm.lenses import load_probe

    return load_probe(_policy_folder(run_id, tracking_uri))
