"""Structured configs: every shipped option composes to what it did before the schemas, and a
mistyped key fails while Hydra composes, before any run opens."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, REPO, compose_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from test_cli import run_py

from adainfer.compose.resume import config_hash
from adainfer.compose.settings import check_settings

SNAPSHOT = REPO / "tests" / "data" / "composed_configs.json"
OPTIONS = [
    f"{group}={path.stem}"
    for group in ("model", "task", "classifier", "probe")
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_")
]


# What changed on purpose since the snapshot: svm and crf show the threshold every policy takes
# (null = the policy's own rule, as before), so classifier.threshold=... needs no "+"; hub models
# name their family (model_type), checked against a model.path folder; every classifier shows its
# first_layer (1 = every layer, as before; probe.first_layer is its deprecated alias) and its
# schedule (all = asked at every layer from first_layer on, as before); the job
# config names its stage (all = extract, decide and log, as before) and resume (false: every job
# runs, as before); risk control names its
# bound and loss (binomial on the flip loss, as before); data tasks name where calibration comes
# from (train, as before; SST-2: its test split), and that they generate nothing (generate:
# false, max_new_tokens: 16 for when they do), and the job config names the generation's
# kv_fill (propagate; read only when a task generates) and risk control what it bounds of
# generated answers (answers: null, answer_grid: 20; read only then too); data tasks name their
# fit split (n_fit: 0, none, as before) and their test split's source (test_from: test, their
# own, as before), and SST-2 its train rows (train_rows: phrases, every row, as before); every
# classifier its read price (read_price: null, a probe priced at its FLOPs, as before), and its
# features (null: the job's feature_set, as before). classifier=state and classifier=auto are
# new since the snapshot: each entry was taken when it was added, in the snapshot's shape.
AUTO = "adainfer.decide.policies.AutoPolicy"
THRESHOLD_SHOWN = ("adainfer.decide.policies.SVMPolicy", "adainfer.decide.policies.CRFPolicy")
FAMILY = {"llama2_7b": "llama", "llama2_13b": "llama", "llama2_70b": "llama", "opt_13b": "opt"}


def composed(override: str) -> dict:
    return OmegaConf.to_container(compose_cfg([override]), resolve=False)


def test_every_option_is_in_the_snapshot():
    assert sorted(json.loads(SNAPSHOT.read_text())) == sorted(OPTIONS)


@pytest.mark.parametrize("override", OPTIONS)
def test_each_option_composes_as_before_the_schemas(override):
    """tests/data/composed_configs.json was composed on the code before the schemas existed."""
    expected = json.loads(SNAPSHOT.read_text())[override]
    if expected["classifier"]["_target_"] in THRESHOLD_SHOWN:
        expected["classifier"]["threshold"] = None
    if expected["classifier"]["_target_"] != AUTO:
        expected["classifier"]["first_layer"] = 1
        expected["classifier"]["schedule"] = "all"
        expected["classifier"]["read_price"] = None
        expected["classifier"]["features"] = None
    expected["stage"] = "all"
    expected["resume"] = False
    expected["risk"] |= {"bound": "binomial", "loss": "flip", "answers": None, "answer_grid": 20}
    expected["kv_fill"] = "propagate"
    if expected["model"]["name"] in FAMILY:
        expected["model"]["model_type"] = FAMILY[expected["model"]["name"]]
    _calibration_from(expected["task"])
    assert composed(override) == expected


def _calibration_from(task: dict) -> None:
    """Data tasks (and their suites' members) name where calibration comes from: train, as
    before, except SST-2's, from its test split (its train split is phrases); and their fit
    split, none (n_fit: 0); their test split, their own (test_from: test); SST-2 also its train
    rows, every one (train_rows: phrases)."""
    if "split_seed" in task and "rule" not in task:
        task["calibration_from"] = "test" if task.get("name") == "sst2" else "train"
        task |= {"generate": False, "max_new_tokens": 16, "n_fit": 0, "test_from": "test"}
        if task.get("name") == "sst2":
            task["train_rows"] = "phrases"
    for member in task.get("tasks", {}).values() if isinstance(task.get("tasks"), dict) else ():
        _calibration_from(member)


ADDED = [
    ("+classifier.treshold=0.5", "unknown key classifier.treshold: classifier takes"),
    ("classifier=gap +classifier.treshold=0.5", "(did you mean classifier.threshold?)"),
    ("+task.n_trian=5", "unknown key task.n_trian"),
    ("+shotz=1", "unknown key shotz: the job config takes"),
    ("+trainer.acelerator=cpu", "(did you mean trainer.accelerator?)"),
    (
        "task=qa +task.tasks.squad.train_fration=0.3",
        "did you mean task.tasks.squad.train_fraction?",
    ),
    (
        "+task@fit.tasks.x=sst2 +fit.tasks.x.lable_words=[a,b]",
        "unknown key fit.tasks.x.lable_words",
    ),
    ("model=tiny_llama +model.tokenizer.fle=x", "did you mean model.tokenizer.file?"),
    ("probe=tuned +probe.rigde=1", "did you mean probe.ridge?"),
]


@pytest.mark.parametrize(("overrides", "message"), ADDED, ids=[a[0] for a in ADDED])
def test_a_key_added_with_plus_that_no_schema_has_is_a_mistake(overrides, message):
    problems = check_settings(compose_cfg(overrides.split()))
    assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.parametrize("override", ["classifier.treshold=0.5", "task.n_trian=5", "shotz=1"])
def test_a_mistyped_key_fails_while_hydra_composes(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_cfg([override])


def test_every_shipped_option_knows_all_its_keys():
    for override in OPTIONS:
        assert check_settings(compose_cfg([override])) == [], override


def test_a_misspelt_added_key_exits_2_with_the_other_mistakes_before_any_run(tmp_path):
    proc = run_py(["+task.n_trian=5", "shots=-1"], tmp_path)
    assert proc.returncode == 2
    assert "adainfer: error: 2 bad settings" in proc.stderr
    assert "unknown key task.n_trian" in proc.stderr and "did you mean task.n_train?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("override", [o for o in OPTIONS if o.startswith("task=")])
def test_every_task_with_a_fit_split_size_hands_it_to_what_it_builds(override, data_dir):
    """task.n_fit reaches every task that takes it: set on a list suite (rules) for all its
    members, or on each member node of a suite of nodes (classification, qa)."""
    from omegaconf import DictConfig

    from adainfer.compose.inputs import build

    cfg = compose_cfg([override])
    nodes = cfg.task.tasks.values() if isinstance(cfg.task.get("tasks"), DictConfig) else []
    nodes = [n for n in [cfg.task, *nodes] if "n_fit" in n]
    if not nodes:  # generated tasks (next_item) hold no fit split
        assert override.startswith("task=synthetic_"), override
        return
    for node in nodes:
        node.n_fit = 3
    task = build(cfg.task, "task")
    members = getattr(task, "tasks", None) or {"": task}
    assert {m.n_fit for m in members.values()} == {3}, override


# tests/data/config_hashes.json: the resume hash (adainfer.config_hash) of every shipped option
# under these settings, computed by the code before the package took one subpackage per stage
# (c974dae). A job's hash must not move with the code: grids logged before still resume.
HASHED_WITH = [
    [],
    ["preset=paper"],
    ["task=squad", "task.generate=true"],
    ["task=squad", "task.generate=true", "risk.epsilon=0.1", "risk.answers=equal"],
    ["task=sst2", "task.n_fit=10"],
    ["classifier=svm", "classifier.read_price=0.7"],
    ["task=sst2", "task.train_rows=sentences"],
    ["kv_fill=recompute"],
]


def test_every_option_hashes_as_before_the_relayout():
    expected = json.loads((REPO / "tests" / "data" / "config_hashes.json").read_text())
    found = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # as run.py composes
        for option in OPTIONS:
            for extra in HASHED_WITH:
                key = str([option, *extra])
                if key in expected:
                    # The default job's classifier was state until classifier=auto (#29):
                    # the same job now names it.
                    given = [option, *extra]
                    named = any(o.startswith(("classifier=", "preset=")) for o in given)
                    overrides = given + ([] if named else ["classifier=state"])
                    found[key] = config_hash(compose(config_name="config", overrides=overrides))
    assert found.keys() == expected.keys()
    moved = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    assert not moved, moved
