"""The two stages: ``stage=extract`` stores the layer traces, ``stage=decide`` reads them and
never loads the model; together they give exactly what one ``stage=all`` run gives."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, compose_cfg, paper
from test_cli import run_py, runs_in

from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

SST2 = ["task=sst2", "task.n_train=12", "task.n_test=8"]
SMALL = ["model=tiny_llama", *SST2, "shots=1"]
SIX = "svm,crf,gap,logreg,never,oracle_consistent"


def _metrics(uri: str, experiment: str):
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=[experiment])
    assert set(found.status) == {"FINISHED"}
    metrics = found.filter(like="metrics.").set_index(found["params.classifier"]).sort_index()
    return found, metrics


@pytest.fixture(autouse=True)
def _data(data_dir, monkeypatch):
    monkeypatch.setenv("ADAINFER_DATA_DIR", str(data_dir))  # for run.py and in-process runs


# run.py as it runs for a user, watched: at exit, the transformers model code the process holds.
WATCHED = """
import atexit, runpy, sys
def report():
    held = [m for m in sys.modules if m.startswith("transformers.models.") and ".modeling_" in m]
    print("MODEL CODE HELD: " + (",".join(sorted(held)) or "none"), file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_watched(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-c", WATCHED, str(REPO / "run.py"), *paper(args)]
    command += [f"hydra.sweep.dir={tmp_path / 'multirun'}", f"hydra.run.dir={tmp_path / 'out'}"]
    return subprocess.run(
        command, cwd=tmp_path, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )


def held(done: subprocess.CompletedProcess) -> str:
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("MODEL CODE HELD: ")]
    return line


def test_decide_sweep_of_six_classifiers_loads_no_model(tmp_path):
    traces = f"traces.dir={tmp_path / 'traces'}"
    extracted = run_watched(["stage=extract", *SMALL, traces, "mlflow.experiment=stages"], tmp_path)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    assert "traces computed in" in extracted.stdout + extracted.stderr
    assert "modeling_llama" in held(extracted), "the check below could not fail"
    assert runs_in(tmp_path).empty, "stage=extract logs no MLflow run"

    decided = run_watched(
        ["-m", "stage=decide", *SMALL, traces, f"classifier={SIX}", "mlflow.experiment=stages"],
        tmp_path,
    )
    assert decided.returncode == 0, decided.stderr[-3000:]
    assert "modeling_llama" not in held(decided), "stage=decide loaded a model"
    assert "GPU available" not in decided.stderr, "stage=decide built a Lightning Trainer"
    found = runs_in(tmp_path)
    assert sorted(found["params.classifier"]) == sorted(SIX.split(","))
    assert set(found.status) == {"FINISHED"}
    assert set(found["tags.llm_forward"]) == {"trace_store"}
    assert set(found["tags.adainfer.stage"]) == {"decide"}


@pytest.mark.parametrize(
    "setting",
    [
        SST2,
        [*SST2, "probe=tuned", "task.n_calibration=12", "risk.epsilon=0.2", "risk.resplits=2"],
        ["task=synthetic_rules", "task.tasks.next.n_test=6", "task.tasks.prev.n_test=6"],
    ],
    ids=["logit-lens", "tuned-risk", "suite"],
)
def test_extract_then_decide_equals_one_whole_run(setting, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["model=tiny_llama", "shots=1", *setting, f"mlflow.tracking_uri={uri}"]
    for classifier in ("svm", "gap"):
        whole = [*base, f"classifier={classifier}", "mlflow.experiment=whole"]
        pipeline.run(compose_cfg([*whole, "traces.enabled=false"]))
    traces = f"traces.dir={tmp_path / 'traces'}"
    assert pipeline.run(compose_cfg([*base, "stage=extract", traces])) == {}
    for classifier in ("svm", "gap"):
        split = [*base, f"classifier={classifier}", "mlflow.experiment=split", traces]
        pipeline.run(compose_cfg([*split, "stage=decide"]))
    whole_runs, whole = _metrics(uri, "whole")
    split_runs, split = _metrics(uri, "split")
    assert len(whole_runs) == len(split_runs) > 0
    assert set(split_runs["tags.llm_forward"].dropna()) == {"trace_store"}
    assert whole.columns.equals(split.columns)
    assert whole.equals(split), (whole - split).abs().max()


def test_decide_without_traces_says_to_extract_and_opens_no_run(tmp_path):
    empty = tmp_path / "empty"
    done = run_py(["stage=decide", *SMALL, f"traces.dir={empty}"], tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "stage=decide found no stored trace of tiny_llama sst2/" in done.stderr
    assert "stage=extract" in done.stderr
    assert "Traceback" not in done.stderr
    assert runs_in(tmp_path).empty


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=decide", "engine=true"], "stage=decide with engine=true"),
        (["stage=extract", "engine=true"], "stage=extract with engine=true"),
        (["stage=extract", "traces.enabled=false"], "stage=extract with traces.enabled=false"),
        (["stage=decide", "traces.enabled=false"], "stage=decide with traces.enabled=false"),
        (["stage=decid"], "unknown stage stage='decid'"),
    ],
)
def test_a_stage_that_cannot_work_is_refused_before_anything_loads(overrides, message):
    with pytest.raises(AdaInferError, match=message):
        pipeline.run(compose_cfg(["model=tiny_llama", *overrides]))


# run.py where torch, transformers and Lightning cannot be imported: each attempt fails, and is
# listed at exit (a library may try one and do without it).
BLOCKED = """
import atexit, importlib.abc, runpy, sys
HEAVY = {"torch", "transformers", "lightning", "pytorch_lightning", "accelerate"}
tried = set()
class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            tried.add(name.split(".")[0])
            raise ImportError(f"{name} cannot be imported on this machine")
        return None
sys.meta_path.insert(0, Unimportable())
atexit.register(lambda: print("TRIED: " + ",".join(sorted(tried)), file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_decide_runs_where_torch_transformers_and_lightning_cannot_be_imported(tmp_path):
    traces = f"traces.dir={tmp_path / 'traces'}"
    setting = [*SMALL, "probe=tuned", "task.n_calibration=12", "risk.epsilon=0.2", traces]
    # classifier=state: its traces keep the hidden states, and the same pass stores them without
    extracted = run_watched(["stage=extract", *setting, "classifier=state"], tmp_path)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-c", BLOCKED, str(REPO / "run.py")]
    command += paper(["-m", "stage=decide", *setting, "classifier=svm,gap,state"])
    command += [f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    decided = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert decided.returncode == 0, decided.stderr[-3000:]
    assert "TRIED: " in decided.stderr, "the blocker did not run"
    found = runs_in(tmp_path)
    assert sorted(found["params.classifier"]) == ["gap", "state", "svm"]
    assert set(found.status) == {"FINISHED"}
    assert set(found["tags.adainfer.stage"]) == {"decide"}
    assert found["metrics.honest_flops_ratio"].notna().all()
    assert (found["params.n_calibration"] == "12").all()
