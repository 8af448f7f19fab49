"""The closed sets of names a config may choose from, shared by the config checks and the code.

Dependency-free on purpose: ``adainfer.compose.settings`` checks a config against these before
anything heavy loads, and the stages below it (records, policies, lenses, risk, the engine's
K/V fills, the tasks' split sources) name their options from here, so no stage imports the
config layer.
"""

from __future__ import annotations

import re
from typing import Any


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


FEATURES = ("gap", "top_prob")
RECORDED = ("gap", "top_prob", "cos_attn", "cos_mlp", "cos_hidden")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "base": FEATURES,
    "attn": (*FEATURES, "cos_attn"),  # the paper's "+attn"
    "mlp": (*FEATURES, "cos_mlp"),
    "hidden": (*FEATURES, "cos_hidden"),
    "all": RECORDED,
    # read on the answer set's rows of the LM head only (tasks with fixed labels): |labels| x h
    # per read instead of V x h; the exit's answer still comes from the full head
    "labels": ("label_gap", "label_top_prob"),
}
# What a read of the label rows gives: gap and top-1 probability of the softmax over the
# labels' first tokens (``LayerRecords.label_ids``), recorded for every task with fixed labels.
LABEL_FEATURES = ("label_gap", "label_top_prob")
# What a policy reads that is no probe output: the last token's hidden state after the layer
# (``ExitPolicy.reads``); traces keep it only for a policy that reads it.
HIDDEN_STATE = "hidden_state"
STATE_HEADS = ("per_layer", "shared")  # how classifier=state is fitted (policies/state.py)
PROBES = ("logit_lens", "tuned")
STAGES = ("all", "extract", "decide")  # adainfer.run.job
# How risk control tests a threshold (adainfer.decide.risk, adainfer.decide.bounds): the p-value,
# the loss.
CALIBRATION_SOURCES = ("train", "test")  # adainfer.tasks.data: task.calibration_from
TEST_SOURCES = ("test", "train")  # adainfer.tasks.data: task.test_from
SST2_TRAIN_ROWS = ("phrases", "sentences")  # adainfer.tasks.classification: task.train_rows
RISK_BOUNDS = ("binomial", "hb", "wsr")
RISK_LOSSES = ("flip", "drop")
# What risk control bounds for generated answers (task.generate=true; adainfer.run.generation):
# the share of answers not equal to the full model's, or the drop of their exact match.
ANSWER_RISKS = ("equal", "metric")
# How generation fills the cache of the layers a token skipped (adainfer.engine.kv).
KV_FILLS = ("propagate", "recompute")


def bound_loss_mismatch(bound: Any, loss: Any) -> tuple[str, str] | None:
    """(problem, fix) when ``risk.bound`` cannot test ``risk.loss``: the exact binomial p-value
    counts 0/1 losses, and only ``flip`` is one."""
    if bound == "binomial" and loss in RISK_LOSSES and loss != "flip":
        return (
            f"risk.bound=binomial with risk.loss={loss}: the binomial p-value counts 0/1 "
            f"losses, and the {loss} loss takes -1, 0 and 1",
            f"test it with a bounded-mean bound (e.g. risk.bound=wsr risk.loss={loss}), "
            "or keep the binomial with risk.loss=flip",
        )
    return None


def every_k(value: Any) -> int | None:
    """k of a schedule spelt ``every_<k>`` (k >= 1); None for anything else."""
    match = re.fullmatch(r"every_([1-9][0-9]*)", value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def schedule_ok(value: Any) -> bool:
    """A policy's schedule (``adainfer.decide.schedule``): ``all``, ``auto``, ``every_<k>`` or a
    non-empty list of layer numbers >= 1."""
    if isinstance(value, list | tuple):
        return bool(value) and all(_whole(layer, 1) for layer in value)
    return value in ("all", "auto") or every_k(value) is not None
