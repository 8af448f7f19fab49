"""Structured configs: every shipped option composes to what it did before the schemas, and a
mistyped key fails while Hydra composes, before any run opens."""

from __future__ import annotations

import json

import pytest
from conftest import CONF, REPO, compose_cfg
from omegaconf import OmegaConf

SNAPSHOT = REPO / "tests" / "data" / "composed_configs.json"
OPTIONS = [
    f"{group}={path.stem}"
    for group in ("model", "task", "classifier", "probe")
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_")
]


def composed(override: str) -> dict:
    return OmegaConf.to_container(compose_cfg([override]), resolve=False)


def test_every_option_is_in_the_snapshot():
    assert sorted(json.loads(SNAPSHOT.read_text())) == sorted(OPTIONS)


@pytest.mark.parametrize("override", OPTIONS)
def test_each_option_composes_as_before_the_schemas(override):
    """tests/data/composed_configs.json was composed on the code before the schemas existed."""
    assert composed(override) == json.loads(SNAPSHOT.read_text())[override]
