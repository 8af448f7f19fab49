"""scripts/risk_study.py's summary: the best deployable certified policy per row, the targets,
and the order its jobs run in (one LLM pass per split). No pipeline job runs here."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest
from conftest import REPO


@pytest.fixture
def study(monkeypatch):
    """The script as a module (scripts/ is on sys.path when a script runs)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("risk_study")


def run(model, task, method, flops, certified=None, violation=None, drop=0.0):
    return {
        "model": model,
        "task": task,
        "method": method,
        "acc_drop": drop,
        "honest_flops_ratio": flops,
        "risk_certified": certified,
        "risk_resplit_exceed_rate": violation,
    }


def frame(model="smollm2_135m", violation=0.05):
    return pd.DataFrame(
        [
            # sst2: the cheapest certified +risk run wins; an uncertified or uncontrolled
            # cheaper run does not count
            run(model, "sst2", "svm+risk", 0.7, 1, 0.0),
            run(model, "sst2", "tuned svm+risk", 0.6, 1, violation, drop=0.01),
            run(model, "sst2", "tuned state+risk", 0.5, 0, 0.0),
            run(model, "sst2", "tuned svm", 0.3),
            run(model, "sst2", "tuned oracle_consistent", 0.4),
            # ag_news: nothing certified, so the full model deploys
            run(model, "ag_news", "svm+risk auto", 0.9, 0, 0.2),
            run(model, "ag_news", "tuned oracle_consistent", 0.5),
        ]
    )


def test_best_deployable_picks_the_cheapest_certified_run(study):
    best = study.best_deployable(frame()).set_index("task")
    assert best.loc["sst2", "best"] == "tuned svm+risk"
    assert best.loc["sst2", ["honest_flops", "violation_rate", "oracle"]].tolist() == [
        0.6,
        0.05,
        0.4,
    ]
    assert best.loc["sst2", "distance"] == pytest.approx(0.2)
    assert best.loc["ag_news", "best"] == "full model"
    assert best.loc["ag_news", ["honest_flops", "violation_rate"]].tolist() == [1.0, 0.0]
    assert best.loc["ag_news", "distance"] == pytest.approx(0.5)
    average = best.loc["**Avg** (2)"]
    assert average.honest_flops == pytest.approx(0.8)
    assert average.distance == pytest.approx(0.35)
    assert average.violation_rate == 0.05  # the worst row's


def test_targets_met_missed_and_not_run(study):
    lines = study.target_lines(study.best_deployable(frame()), delta=0.1)
    assert lines == [
        "- smollm2_135m sst2: honest FLOPs 0.600 <= 0.80: met",
        "- smollm2_135m ag_news: honest FLOPs 1.000 <= 0.80: MISSED",
        "- smollm2_135m task average: honest FLOPs 0.800 <= 0.92: met",
        "- gemma3_270m task average: honest FLOPs < 1.00: not run",
        "- re-split violation rate <= delta = 0.1 on every row (worst 0.05): met",
    ]
    over = study.target_lines(study.best_deployable(frame(violation=0.15)), delta=0.1)
    assert over[-1].endswith("(worst 0.15): MISSED on smollm2_135m sst2")


def test_hidden_state_and_tuned_jobs_run_first(study):
    order = study.run_order(list(study.METHODS))
    # a hidden-state pass stores all: the methods that read hidden states (state, auto) first,
    # the tuned lens's first of them
    assert order[:4] == ["tuned state+risk", "tuned auto+risk", "state+risk", "auto+risk"]
    tuned = [i for i, m in enumerate(order) if "probe=tuned" in study.METHODS[m]]
    plain = [i for i, m in enumerate(order[4:], 4) if "probe=tuned" not in study.METHODS[m]]
    assert max(tuned) < min(plain)
    # the original study's order, as before the new methods
    assert study.run_order(study.chosen_methods(["original"])) == [
        "tuned svm",
        "tuned svm+risk",
        "tuned oracle_gold",
        "tuned oracle_consistent",
        "svm",
        "svm+risk",
        "oracle_gold",
        "oracle_consistent",
    ]


def test_combined_studies_take_each_task_wholly_from_the_last_file_that_has_it(
    study, monkeypatch, tmp_path
):
    """scripts/combine_studies.py: a follow-up study's task replaces all of the first study's
    rows of that task (its cheaper uncertified run cannot mix with the old certified one);
    tasks it did not rerun stay; the best-deployable table is computed on the result."""
    combine = importlib.import_module("combine_studies")
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    frame().to_csv(first, index=False)
    pd.DataFrame(
        [
            run("smollm2_135m", "ag_news", "tuned svm+risk auto", 0.7, 1, 0.1),
            run("smollm2_135m", "ag_news", "tuned state+risk", 0.65, 0, 0.0),
        ]
    ).to_csv(later, index=False)
    runs, source = combine.combined([first, later])
    assert source == {("smollm2_135m", "sst2"): first, ("smollm2_135m", "ag_news"): later}
    ag_news = runs[runs.task == "ag_news"]
    assert sorted(ag_news.method) == ["tuned state+risk", "tuned svm+risk auto"]
    best = study.best_deployable(runs).set_index("task")
    assert best.loc["ag_news", ["best", "honest_flops"]].tolist() == ["tuned svm+risk auto", 0.7]
    assert best.loc["sst2", "honest_flops"] == 0.6
    assert combine.combined([later, first])[1][("smollm2_135m", "ag_news")] == first
    (tmp_path / "bad.csv").write_text("model,task\nm,t\n")
    with pytest.raises(SystemExit, match="not a risk_runs.csv"):
        combine.combined([tmp_path / "bad.csv"])


def auto_run(model, task, flops, chosen, violation=0.05, pool=0.0, drop=0.0):
    return run(model, task, "tuned auto+risk", flops, 1, violation, drop) | {
        "chosen": chosen,
        "risk_resplit_pool_exceed_rate": pool,
    }


def test_classifier_auto_table_reads_its_one_run_per_row_and_checks_issue_29s_targets(study):
    """The classifier=auto table takes each row's one auto run as it is (no pick over runs),
    beside the tuned oracle; the targets say met, MISSED or not run, and a row above 1.000 is
    named."""
    runs = pd.DataFrame(
        [
            auto_run("smollm2_135m", "sst2", 0.66, "logreg_labels", drop=-0.01),
            run("smollm2_135m", "sst2", "tuned oracle_consistent", 0.53),
            # a cheaper certified run of another method does not replace the auto row
            run("smollm2_135m", "sst2", "tuned svm+risk auto", 0.50, 1, 0.0),
            auto_run("smollm2_135m", "ag_news", 0.70, "svm_auto", violation=0.15, pool=0.05),
            run("smollm2_135m", "ag_news", "tuned oracle_consistent", 0.65),
        ]
    )
    table = study.selected(runs).set_index("task")
    assert table.loc["sst2", ["best", "honest_flops", "oracle"]].tolist() == [
        "logreg_labels",
        0.66,
        0.53,
    ]
    assert table.loc["ag_news", "distance"] == pytest.approx(0.05)
    average = table.loc["**Avg** (2)"]
    assert average.honest_flops == pytest.approx(0.68)
    assert (average.violation_rate, average.pool_violation_rate) == (0.15, 0.05)
    lines = study.auto_section(runs, delta=0.1)[-1].splitlines()
    assert lines[1:] == [
        "- smollm2_135m sst2: honest FLOPs 0.660 <= 0.68: met",
        "- smollm2_135m ag_news: honest FLOPs 0.700 <= 0.65: MISSED",
        "- gemma3_270m sst2: honest FLOPs <= 0.80: not run",
        "- smollm2_135m task average: honest FLOPs 0.680 <= 0.90: met",
        "- gemma3_270m task average: honest FLOPs <= 0.95: not run",
        "- re-split violation rate <= delta = 0.1 on every row (worst 0.15): MISSED on "
        "smollm2_135m ag_news",
        "- no row above 1.000: met",
    ]
    # no auto run at all: no section (the combined output of older studies is unchanged)
    assert study.auto_section(frame(), delta=0.1) == []
