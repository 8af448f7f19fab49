"""Entry point: ``python run.py [overrides]`` or ``python run.py -m`` for a sweep."""

import hydra
from omegaconf import DictConfig

from adainfer.pipeline import main as adainfer_main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return adainfer_main(cfg)["acc"]


if __name__ == "__main__":
    main()
