"""``run.py``'s side of the door: check the config and data first, then run the job.

Importing this module costs Hydra and OmegaConf only. A mistake in the config or the data is
answered with one message and exit status 2 before torch, transformers, Lightning or MLflow are
imported; so is a mistake Hydra finds while composing (an unknown option or key), which Hydra
itself would end with status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from adainfer.compose import schema  # noqa: F401 - registers the config schemas with Hydra
from adainfer.errors import AdaInferError, fail  # noqa: F401 - fail re-exported

_jobs_started = 0  # Hydra composed a config and handed it to main()
GROUPS = ("model", "task", "classifier", "probe")  # what conf/config.yaml chooses


def check_added_groups(overrides: list[str]) -> None:
    """``+classifier=svm`` appends a second classifier to a config that chooses one already.
    Hydra refuses that for another option ("Multiple values for classifier") but lets it pass
    for the same one when the option has a defaults list (each option names its schema)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith("+") and not key.startswith("++") and key[1:] in GROUPS:
            group = key[1:]
            raise AdaInferError(
                f"{override} adds a second {group}: conf/config.yaml chooses one already",
                f"override it instead: {group}={value}",
            )


def main(cfg: DictConfig) -> dict[str, float]:
    """One job: its inputs are checked and loaded, then :func:`adainfer.run.job.main` runs it."""
    global _jobs_started
    _jobs_started += 1
    from adainfer.compose.inputs import load_inputs

    try:
        if HydraConfig.initialized():
            check_added_groups(list(HydraConfig.get().overrides.task))
        inputs = load_inputs(cfg)
    except AdaInferError as err:
        fail(err)
    import adainfer.run.job as pipeline  # the heavy part: torch, transformers, Lightning, MLflow

    return pipeline.main(cfg, inputs)


def run_hydra(hydra_main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; Hydra's own config errors exit 2 like ours."""
    try:
        hydra_main()
    except SystemExit as stop:
        if stop.code == 1 and _jobs_started == 0:  # Hydra failed before composing a job
            sys.exit(2)
        raise
