"""classifier=state: which head, against the SVM on probe features, along their trade-off curves.

Reads the traces a ``classifier=state`` job stored (hidden states included; no LLM pass here),
fits each variant on the fit records and sweeps its threshold over the quantiles of its test
scores. For each allowed accuracy drop it prints the cheapest point: honest FLOPs ratio, a
batch-1 time model (a layer = 1, a probe = ``--probe-layers`` layers, heads and translators
left out) and the mean exit layer. Thresholds are picked on test, the same way for every
policy: this compares curves; it is no deployable setting (that is ``risk.epsilon``).

Variants: the per-layer head (the default) at two C, with balanced class weights, the shared
head with a per-layer bias, and the per-layer head on the states read through the tuned lens's
translators (folded, it would deploy at the same 2h cost; here it is fitted on translated
states directly).

    python run.py model=smollm2_135m task=sst2 task.n_train=200 task.n_test=200 shots=5 \\
        probe=tuned classifier=state stage=extract
    python scripts/state_study.py model=smollm2_135m task=sst2 task.n_train=200 \\
        task.n_test=200 shots=5 probe=tuned
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import compose_config, use_shared_data

from adainfer.decide import costs
from adainfer.decide.metrics import apply_exits
from adainfer.decide.policies import StatePolicy, SVMPolicy
from adainfer.decide.records import LayerRecords
from adainfer.llm.readout import half_state
from adainfer.run import job as pipeline

DROPS = (0.0, 0.01, 0.02, 0.05)


def translated(records: LayerRecords, probe) -> LayerRecords:
    """The records with each layer's state read through the probe's translator."""
    with torch.no_grad():
        states = probe.translate(torch.from_numpy(records.hidden.astype(np.float32)))
    hidden = half_state(states).numpy()
    return LayerRecords(records.values, records.argmax, records.gold, records.seq_len, hidden)


def curve(policy, test: LayerRecords, traces, probe_layers: float) -> np.ndarray:
    """(acc drop, honest FLOPs ratio, time-model ratio, mean exit) per threshold."""
    scores = policy.scores(test)
    L = test.num_layers
    points = []
    for threshold in np.unique(np.quantile(scores[np.isfinite(scores)], np.linspace(0, 1, 201))):
        policy.threshold = float(threshold)
        exits = policy.first_exits(scores > threshold)
        drop = apply_exits(test, exits).accuracy_drop(test.gold)
        honest = costs.trace_flops_ratio(
            exits, test.seq_len, traces.model.config, policy, traces.probe
        )
        probes = exits if policy.reads_probe else np.ones_like(exits)
        time = (exits + probe_layers * probes) / (L + probe_layers)
        points.append((drop, honest.mean(), time.mean(), exits.mean()))
    return np.array(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="run.py overrides naming the traces")
    parser.add_argument("--probe-layers", type=float, default=2.5, help="a probe's time in layers")
    parser.add_argument(
        "--skip-svm",
        action="store_true",
        help="leave the SVM out: an RBF SVC's fit grows at least with the square of its pairs, "
        "which with task.n_fit=2000 takes many minutes",
    )
    args = parser.parse_args()
    use_shared_data()
    cfg = compose_config([*args.overrides, "classifier=state", "stage=decide"])
    job = pipeline.compose(cfg)
    name = next(iter(job.prompts))
    traces = pipeline.extract(job, name)
    fit, test = traces.fit, traces.test
    variants = {
        "svm (probe features)": (SVMPolicy(seed=cfg.seed), fit, test),
        "state per_layer C=1": (StatePolicy(), fit, test),
        "state per_layer C=0.1": (StatePolicy(C=0.1), fit, test),
        "state per_layer balanced": (StatePolicy(class_weight="balanced"), fit, test),
        "state shared C=1": (StatePolicy(head="shared"), fit, test),
        "state shared C=0.1": (StatePolicy(head="shared", C=0.1), fit, test),
    }
    if traces.probe.name == "tuned":
        variants["state per_layer, translated"] = (
            StatePolicy(),
            translated(fit, traces.probe),
            translated(test, traces.probe),
        )
    if args.skip_svm:
        del variants["svm (probe features)"]
    acc_full = np.mean(test.argmax[:, -1] == test.gold)
    print(f"{job.model.name} {name}: full model acc {acc_full:.3f}, {test.num_layers} layers")
    print("cheapest point per allowed drop: honest FLOPs ratio / time-model ratio / mean exit")
    print(f"{'policy':<30}" + "".join(f"{'drop <= ' + str(d):>24}" for d in DROPS))
    for label, (policy, fit_records, test_records) in variants.items():
        points = curve(policy.fit(fit_records), test_records, traces, args.probe_layers)
        cells = []
        for drop in DROPS:
            ok = points[points[:, 0] <= drop + 1e-9]
            best = ok[np.argmin(ok[:, 1])] if len(ok) else None
            cells.append("-" if best is None else f"{best[1]:.3f} / {best[2]:.3f} / {best[3]:.1f}")
        print(f"{label:<30}" + "".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
