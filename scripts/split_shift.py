"""Are a task's calibration and test splits drawn alike? Risk control's guarantee assumes so.

Reads the traces a job stored (``stage=decide``: no LLM pass, the weights never load) and prints,
per split (fit, calibration, test): its size, the full model's accuracy, the accuracy of the
first layer's answer (what an exit at layer 1 would give), the share of each gold answer token
and the mean prompt length. A calibration split whose numbers differ from the test split's
calibrates a threshold for other data than it is used on.

    python run.py model=smollm2_135m task=sst2 task.n_train=100 task.n_calibration=300 \\
        task.n_test=200 probe=tuned classifier=state risk.epsilon=0.05 \\
        task.calibration_from=train stage=extract
    python scripts/split_shift.py model=smollm2_135m task=sst2 task.n_train=100 \\
        task.n_calibration=300 task.n_test=200 probe=tuned classifier=state risk.epsilon=0.05 \\
        task.calibration_from=train
"""

from __future__ import annotations

import argparse

import numpy as np
from common import compose_config, use_shared_data

from adainfer.run import job as pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="run.py overrides naming the traces")
    args = parser.parse_args()
    use_shared_data()
    cfg = compose_config([*args.overrides, "stage=decide"])
    job = pipeline.compose(cfg)
    for name in job.prompts:
        traces = pipeline.extract(job, name)
        print(f"{name}:")
        for split, records in (
            ("fit", traces.fit),
            ("calibration", traces.calibration),
            ("test", traces.test),
        ):
            if records is None:
                continue
            gold = records.gold
            tokens, counts = np.unique(gold, return_counts=True)
            shares = ", ".join(
                f"{t}: {c / len(gold):.2f}" for t, c in zip(tokens, counts, strict=True)
            )
            print(
                f"  {split:<12} n={records.num_instances:<5} "
                f"acc_full={np.mean(records.argmax[:, -1] == gold):.3f} "
                f"acc_layer1={np.mean(records.argmax[:, 0] == gold):.3f} "
                f"mean_tokens={records.seq_len.mean():.0f} gold shares {{{shares}}}"
            )


if __name__ == "__main__":
    main()
