"""The layout is the architecture: import-linter's contracts (pyproject.toml) hold on the package,
they fail when an import breaks them, and deciding works where torch cannot be imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")
HEAVY = ("torch", "transformers", "lightning", "pytorch_lightning", "accelerate")


def _lint(root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts, on the ``adainfer`` package under
    ``root``."""
    env = os.environ | {"PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold():
    out = _lint(REPO, REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout, out.stdout


BROKEN = [
    (
        "decide/records.py",
        "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from adainfer.extract.store import TraceKey  # noqa: F401\n",
        [
            "adainfer.decide is not allowed to import adainfer.extract",
            "No cycles are allowed in adainfer.",
        ],
    ),
    (
        "decide/metrics.py",
        "\n\ndef _on_gpu():\n    import torch\n\n    return torch.cuda.is_available()\n",
        ["adainfer.decide is not allowed to import torch"],
    ),
]


@pytest.mark.parametrize(
    ("module", "added", "messages"), BROKEN, ids=["upward-type-checking", "torch-in-decide"]
)
def test_an_import_that_breaks_a_contract_fails_the_check(module, added, messages, tmp_path):
    """A copy of the package with one import added: an upward one under ``TYPE_CHECKING``
    (records, in decide, importing the trace store, in extract: a layer broken and a cycle
    made), or torch imported inside a function of decide."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "adainfer", tmp_path / "adainfer", ignore=ignore)
    changed = tmp_path / "adainfer" / module
    changed.write_text(changed.read_text() + added)
    out = _lint(tmp_path, tmp_path)
    assert out.returncode != 0, out.stdout
    for message in messages:
        assert message in out.stdout, out.stdout


# Deciding in a process where the deep-learning stack cannot be imported: every decide module
# loads, a policy is fitted on layer records, calibrated to a risk limit, scored with honest FLOPs,
# saved and loaded back.
_NO_TORCH = """
import importlib, importlib.abc, json, pkgutil, sys, tempfile
from pathlib import Path

BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} cannot be imported here")
        return None

sys.meta_path.insert(0, Block())
import numpy as np
import adainfer.decide
for found in pkgutil.walk_packages(adainfer.decide.__path__, "adainfer.decide."):
    importlib.import_module(found.name)
from types import SimpleNamespace
from adainfer.decide.policies import SVMPolicy, load_policy
from adainfer.decide.records import LayerRecords
from adainfer.decide.risk import RiskLimit
from adainfer.decide.stage import score

def records(n, layers, seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 5, n)
    settle = rng.integers(1, layers + 1, n)  # the layer from which the argmax is the gold token
    argmax = np.where(np.arange(1, layers + 1)[None, :] >= settle[:, None], gold[:, None], 7)
    gap = np.clip((np.arange(1, layers + 1)[None, :] - settle[:, None] + 2) / layers, 0, 1)
    gap = (gap + 0.05 * rng.random((n, layers))).astype(np.float32)
    values = {"gap": gap, "top_prob": np.clip(gap + 0.1, 0, 1).astype(np.float32)}
    for name in ("cos_attn", "cos_mlp", "cos_hidden"):
        values[name] = np.zeros((n, layers), np.float32)
    return LayerRecords(values, argmax, gold, np.full(n, 40))

config = SimpleNamespace(num_hidden_layers=6, hidden_size=64, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=4, head_dim=16, vocab_size=100,
    model_type="llama")
model = SimpleNamespace(name="m", num_layers=6, hidden_size=64, vocab_size=100, config=config)
outcome = score(SVMPolicy(), records(200, 6, 0), records(100, 6, 1), model,
    calibration=records(300, 6, 2), limit=RiskLimit(0.05, 0.1))
folder = Path(tempfile.mkdtemp()) / "policy"
outcome.policy.save(folder)
again = load_policy(folder)
test = records(100, 6, 1)
same = bool((again.exit_layers(test) == outcome.policy.exit_layers(test)).all())
heavy = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"metrics": outcome.metrics, "same": same, "heavy": heavy}))
"""


def test_deciding_needs_no_torch_transformers_or_lightning():
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, ",".join(HEAVY)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    import json

    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    assert found["same"], "the saved policy decides as the fitted one"
    metrics = found["metrics"]
    assert 0.0 < metrics["honest_flops_ratio"] <= 1.5
    assert {"acc", "acc_full", "flops_ratio", "risk_certified"} <= set(metrics)
