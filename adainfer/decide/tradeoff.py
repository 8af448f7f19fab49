"""Accuracy against FLOPs: sweep a policy's threshold, and place the oracles beside it."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import ExitPolicy, NeverExit, OracleConsistent, OracleGold
from adainfer.decide.records import LayerRecords


def _point(records: LayerRecords, exits: np.ndarray, h: int, V: int) -> dict[str, float]:
    return apply_exits(records, exits).metrics(records, h, V)


def tradeoff_curve(
    policy: ExitPolicy,
    records: LayerRecords,
    hidden_size: int,
    vocab_size: int,
    points: int = 21,
) -> pd.DataFrame:
    """One row per threshold (quantiles of the policy's scores) and one per reference point.

    Columns: policy, threshold, acc, acc_full, flops_ratio, exit_layer_mean.
    """
    rows = []
    scores = policy.scores(records)
    finite = scores[np.isfinite(scores)]
    if finite.size:
        for threshold in np.unique(np.quantile(finite, np.linspace(0, 1, points))):
            exits = policy.first_exits(scores > threshold)
            rows.append(
                {"policy": policy.name, "threshold": float(threshold)}
                | _point(records, exits, hidden_size, vocab_size)
            )
    references = [NeverExit(), OracleConsistent(), OracleGold()]
    for ref in references:
        exits = copy.deepcopy(ref).fit(records).exit_layers(records)
        rows.append(
            {"policy": ref.name, "threshold": float("nan")}
            | _point(records, exits, hidden_size, vocab_size)
        )
    columns = ["policy", "threshold", "acc", "acc_full", "flops_ratio", "exit_layer_mean"]
    return pd.DataFrame(rows)[columns]
