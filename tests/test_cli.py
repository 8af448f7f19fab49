"""run.py as a user runs it: a real -m sweep, and bad input that ends in one clear message."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO, paper

from adainfer.errors import AdaInferError
from adainfer.extract import extractor as extract
from adainfer.run import job as pipeline


def run_py(args: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            *paper(args),
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            f"hydra.run.dir={tmp_path / 'outputs'}",
        ],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


def runs_in(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def test_multirun_sweep_one_finished_run_per_point(tmp_path):
    proc = run_py(
        [
            "-m",
            "model=tiny_llama,tiny_opt",
            "shots=0,5",
            "classifier=svm",
            "task.n_train=16",
            "task.n_test=8",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_in(tmp_path)
    assert len(runs) == 4
    assert set(runs.status) == {"FINISHED"}
    points = set(zip(runs["params.model"], runs["params.shots"], strict=False))
    assert points == {
        ("tiny_llama", "0"),
        ("tiny_llama", "5"),
        ("tiny_opt", "0"),
        ("tiny_opt", "5"),
    }
    assert runs["metrics.flops_ratio"].notna().all() and runs["metrics.acc"].notna().all()
    assert runs["tags.sweep_dir"].nunique() == 1


def test_multirun_sweep_of_a_generating_suite(tmp_path, data_dir):
    """``-m`` over kv_fill on the rules suite with task.generate=true: per point a parent run and
    a run per member, all FINISHED; every member run has generated and scored its answers, and
    the parent holds the members' generation metrics."""
    members = ["country-capital", "english-french"]
    proc = run_py(
        [
            "-m",
            "model=tiny_llama",
            "task=rules",
            f"task.tasks=[{','.join(members)}]",
            f"task.data_dir={data_dir}",
            "task.generate=true",
            "task.max_new_tokens=4",
            "shots=1",
            "task.n_train=12",
            "task.n_test=6",
            "classifier=gap",
            "kv_fill=propagate,recompute",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_in(tmp_path)
    assert len(runs) == 2 * (1 + len(members)) and set(runs.status) == {"FINISHED"}
    children = runs[runs["params.suite"].notna()]
    assert sorted(children["params.task"]) == sorted(members * 2)
    assert sorted(children["tags.gen_kv_fill"]) == ["propagate"] * 2 + ["recompute"] * 2
    for key in ("gen_em", "gen_em_full", "gen_equal_full", "gen_flops_ratio"):
        assert children[f"metrics.{key}"].notna().all(), key
    parents = runs[runs["params.suite"].isna()]
    for member in members:
        assert parents[f"metrics.{member}/gen_em"].notna().all()
    assert "FLOPs per generated token" in proc.stdout  # the verdict line on the answers


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=nope", "Could not find 'model/nope'"),
        ("task=nope", "Could not find 'task/nope'"),
        ("classifier=nope", "Could not find 'classifier/nope'"),
        ("model=llama2_7b", "could not load model 'llama2_7b'"),
        ("task=function_vectors", "no data directory is set"),
    ],
)
def test_bad_input_one_clear_message(override, expected, tmp_path):
    proc = run_py([override], tmp_path, ADAINFER_DATA_DIR="")
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    if (tmp_path / "mlflow.db").exists():
        assert runs_in(tmp_path).empty  # nothing half-logged


def _fail_in_process(overrides, tracking_uri, capsys):
    from conftest import compose_cfg

    cfg = compose_cfg([*overrides, f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=bad"])
    with pytest.raises(SystemExit) as exit_info:
        pipeline.main(cfg)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_data_dir_and_empty_answer(tmp_path, tracking_uri, capsys):
    err = _fail_in_process(
        ["model=tiny_llama", "task=function_vectors", f"task.data_dir={tmp_path / 'none'}"],
        tracking_uri,
        capsys,
    )
    assert "no data directory" in err and "task.data_dir=" in err
    folder = tmp_path / "data" / "function_vectors" / "extractive"
    folder.mkdir(parents=True)
    rows = [f'{{"input": "x{i}", "output": "{"" if i % 2 else "y"}"}}' for i in range(20)]
    (folder / "blank.jsonl").write_text("\n".join(rows) + "\n")
    err = _fail_in_process(
        [
            "model=tiny_llama",
            "task=function_vectors",
            "task.name=blank",
            f"task.data_dir={tmp_path / 'data'}",
            "shots=0",
        ],
        tracking_uri,
        capsys,
    )
    assert "tokenizes to nothing" in err
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(experiment_names=["bad"]).empty


def test_empty_answer_caught_at_encoding(tiny_llama):
    from adainfer.llm.encoding import encode_prompts
    from adainfer.tasks import Example, Prompt

    with pytest.raises(AdaInferError, match="tokenizes to nothing"):
        encode_prompts(tiny_llama.tokenizer, [Prompt(Example("a", "  "))], 2048)


def test_failure_inside_a_run_is_not_left_running(tmp_path, tracking_uri, monkeypatch):
    from conftest import compose_cfg

    def boom(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(extract, "extract_records_multi", boom)  # the LLM pass of a run
    cfg = compose_cfg(
        [
            "model=tiny_llama",
            "task.n_train=8",
            "task.n_test=4",
            "shots=0",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.experiment=crash",
            f"traces.dir={tmp_path}",  # an empty store: the pass must run
        ]
    )
    with pytest.raises(RuntimeError):
        pipeline.run(cfg)
    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.search_runs(experiment_names=["crash"]).status.tolist() == ["FAILED"]
