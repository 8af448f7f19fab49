"""What the scripts share: conf/ composed as run.py composes it, and pipeline runs from it.

Scripts run as ``python scripts/<name>.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adainfer.compose import schema  # noqa: F401 - registers the config schemas
from adainfer.run import job as pipeline

REPO = Path(__file__).resolve().parents[1]


def use_shared_data() -> None:
    """Read the data sets from ``$ADAINFER_DATA_DIR``, else ../shared/data beside the repo."""
    os.environ.setdefault("ADAINFER_DATA_DIR", str(REPO.parent / "shared" / "data"))


def compose_config(overrides: list[str]) -> DictConfig:
    """The job config ``python run.py preset=paper <overrides>`` would get: a study names what
    it changes from the paper's AdaInfer, not from the default job (conf/preset/), unless its
    overrides pick a preset themselves."""
    if not any(o.startswith("preset=") for o in overrides):
        overrides = ["preset=paper", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def study_setting(model: str, task: str, args, n_calibration: int) -> list[str]:
    """The overrides naming a study's (model, task) setting: shots, sizes, δ and experiment
    from its ``args`` (``shots``, ``n_train``, ``n_test``, ``delta``, ``experiment``)."""
    return [
        f"model={model}",
        f"task={task}",
        f"shots={args.shots}",
        f"task.n_train={args.n_train}",
        f"task.n_test={args.n_test}",
        f"task.n_calibration={n_calibration}",
        f"risk.delta={args.delta}",
        f"mlflow.experiment={args.experiment}",
    ]


def run_pipeline(overrides: list[str]) -> dict[str, float]:
    """One tracked pipeline job (as ``python run.py <overrides>``); its metrics."""
    return pipeline.run(compose_config(overrides))


def per_task(metrics: dict[str, float], task: str) -> dict[str, dict[str, float]]:
    """Metrics by task: a suite returns ``member/metric`` keys, a single task its own."""
    members = {k.split("/", 1)[0] for k in metrics if "/" in k}
    if not members:
        return {task: metrics}
    return {
        m: {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(m + "/")}
        for m in sorted(members)
    }
