"""Config mistakes: every size, count, flag and name is checked before a run opens, in seconds."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from conftest import CONF, compose_cfg
from hydra import compose, initialize_config_dir
from test_cli import run_py

from adainfer.compose.settings import check_settings
from adainfer.errors import AdaInferError
from adainfer.run import job as pipeline

BAD = [
    ("shots=abc", "shots='abc' is not a whole number >= 0"),
    ("shots=-1", "shots=-1 is not a whole number >= 0"),
    ("shots=2.5", "shots=2.5 is not a whole number"),
    ("batch_size=0", "batch_size=0 is not a whole number >= 1"),
    ("seed=abc", "seed='abc' is not a whole number"),
    ("context_length=0", "context_length=0 is not a whole number of tokens >= 1"),
    ("task.n_train=-3", "task.n_train=-3 is not a whole number >= 1"),
    ("task.n_test=-5", "task.n_test=-5 is not a whole number >= 1"),
    ("task.n_test=0", "task.n_test=0 is not a whole number >= 1"),
    ("task.n_calibration=-1", "task.n_calibration=-1 is not a whole number >= 0"),
    ("task.split_seed=x", "task.split_seed='x' is not a whole number"),
    ("task=sst2 task.calibration_from=tset", "task.calibration_from='tset' is not one of"),
    ("task=sst2 task.train_rows=sentence", "task.train_rows='sentence' is not one of"),
    ("task=sst2 task.test_from=dev", "task.test_from='dev' is not one of"),
    ("engine=maybe", "engine='maybe' is not true or false"),
    ("traces.enabled=1", "traces.enabled=1 is not true or false"),
    ("feature_set=nope", "unknown feature_set feature_set='nope'"),
    ("probe.name=nope", "unknown probe probe.name='nope'"),
    ("probe.first_layer=0", "probe.first_layer=0 is not a layer number >= 1, or auto"),
    ("probe=tuned probe.ridge=-1", "probe.ridge=-1 is not a number >= 0"),
    ("risk.epsilon=0", "risk.epsilon=0 is not a fraction in (0, 1)"),
    ("risk.delta=1.5", "risk.delta=1.5 is not a probability in (0, 1)"),
    ("risk.resplits=-2", "risk.resplits=-2 is not a whole number >= 0"),
    ("risk.bound=nope", "unknown bound risk.bound='nope' is not one of"),
    ("risk.loss=nope", "unknown loss risk.loss='nope' is not one of"),
    ("risk.loss=drop", "risk.bound=binomial with risk.loss=drop: the binomial p-value counts"),
    ("trainer.devices=0", "trainer.devices=0 is not a number of devices >= 1"),
    ("trainer.devices=[0,0]", "trainer.devices=[0, 0] is not a number of devices >= 1"),
    ("trainer.devices=[]", "trainer.devices=[] is not a number of devices >= 1"),
    ("trainer.devices=auto", "trainer.devices='auto' is not a number of devices >= 1"),
    ("model=llama2_70b trainer.devices=2", "model.device_map=auto with trainer.devices=2"),
    ("mlflow.experiment=''", "mlflow.experiment='' is not a name"),
    ("classifier.C=0", "classifier.C=0 is not a number > 0"),
    ("classifier=gap classifier.threshold=high", "classifier.threshold='high' is not a number"),
    ("classifier=crf classifier.max_iterations=0", "classifier.max_iterations=0 is not"),
    ("task=rules task.tasks=[]", "task.tasks=[] is not a non-empty list of task names"),
    ("+task@fit.tasks.x=sst2 fit.tasks.x.n_train=-1", "fit.tasks.x.n_train=-1 is not"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_setting_is_named_before_any_run(overrides, message, tracking_uri):
    cfg = compose_cfg(
        ["model=tiny_llama", f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment=badset"]
        + overrides.split()
    )
    with pytest.raises(AdaInferError) as err:
        pipeline.run(cfg)
    assert message in str(err.value)
    assert "e.g." in str(err.value)  # and an example of a good value
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name("badset")
    assert experiment is None or mlflow.search_runs([experiment.experiment_id]).empty


def test_the_shipped_configs_are_valid():
    for overrides in (
        [],
        ["task=rules", "probe=tuned"],
        ["task=sst2", "classifier=crf"],
        ["preset=certified"],
        ["preset=certified", "model=gemma3_270m"],
    ):
        assert check_settings(compose_cfg(overrides)) == [], overrides


def test_the_default_job_is_the_certified_preset_with_a_guarantee():
    """``python run.py`` with no overrides composes conf/preset/certified.yaml, which states a
    guarantee (risk.epsilon) for a policy risk control can calibrate."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose(config_name="config")
    assert default == compose_cfg(["preset=certified"])
    assert default != compose_cfg([])  # the paper's AdaInfer is not the default job
    assert check_settings(default) == []
    assert default.risk.epsilon is not None


def test_several_mistakes_are_listed_in_one_message():
    problems = check_settings(compose_cfg(["shots=-1", "batch_size=0", "task.n_train=-3"]))
    assert [p.split("=")[0] for p in problems] == ["shots", "batch_size", "task.n_train"]


def test_checking_a_job_imports_nothing_heavy():
    """run.py checks config and data through these modules before the heavy stack loads."""
    code = (
        "import sys, adainfer, adainfer.run.cli, adainfer.compose.inputs, "
        "adainfer.compose.settings, adainfer.tasks\n"
        "heavy = ('torch', 'transformers', 'lightning', 'mlflow')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_bad_setting_from_the_command_line_exits_2_with_one_message(tmp_path):
    proc = run_py(["shots=abc", "task.n_train=-3"], tmp_path)
    assert proc.returncode == 2
    assert "adainfer: error: 2 bad settings" in proc.stderr
    assert "shots='abc'" in proc.stderr and "task.n_train=-3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the store was never touched


@pytest.mark.parametrize("override", ["model=nope", "+classifier=svm", "shots=[1"])
def test_hydra_config_errors_exit_2_like_ours(override, tmp_path):
    """README: a user mistake exits 2; Hydra's own composition errors included."""
    proc = run_py([override], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
