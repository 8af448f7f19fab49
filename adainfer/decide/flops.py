"""The paper's cost model (Eq. 2).

Per token, a decoder layer costs about 2·(6h + s)·(2bsh) FLOPs and the LM head 2bshV, so the
ratio of an early exit at layer l' to the full depth l is

    (2 l' (6h + s) + V) / (2 l (6h + s) + V)

with h the hidden size, s the sequence length and V the vocabulary size. It charges the LM head
once and ignores the probes at the skipped-over layers; see issue 5 for an honest count.
"""

from __future__ import annotations

import numpy as np


def flops_ratio(
    exit_layer: np.ndarray | int,
    num_layers: int,
    hidden_size: int,
    seq_len: np.ndarray | int,
    vocab_size: int,
) -> np.ndarray:
    """Eq. 2 per instance (broadcasts over exit layers and sequence lengths)."""
    per_layer = 2 * (6 * hidden_size + np.asarray(seq_len, dtype=np.float64))
    exit_layer = np.asarray(exit_layer, dtype=np.float64)
    return (exit_layer * per_layer + vocab_size) / (num_layers * per_layer + vocab_size)
