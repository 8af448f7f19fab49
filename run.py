"""Entry point: ``python run.py [overrides]`` or ``python run.py -m`` for a sweep."""

import hydra
from omegaconf import DictConfig

from adainfer.run import cli


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """The job's accuracy (what a Hydra sweeper optimises); None for ``stage=extract``."""
    return cli.main(cfg).get("acc")


if __name__ == "__main__":
    cli.run_hydra(main)
