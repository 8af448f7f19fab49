"""How much a classifier sweep costs over a single run, now that the LLM runs once.

Times, in one session and on fresh caches, (a) one job and (b) a Hydra multirun over six exit
policies on the same task, then prints their wall times and the ratio (target: <= 1.3).
Both are run as a user would, ``python run.py ...`` in a subprocess.

    python scripts/bench_sweep.py                     # SST-2, 5-shot, SmolLM2 (defaults)
    python scripts/bench_sweep.py --model tiny_llama  # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = "svm,crf,gap,logreg,never,oracle_consistent"


def timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--n", type=int, default=200, help="train and test instances")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("ADAINFER_DATA_DIR", str(REPO.parent / "shared" / "data"))
    common = [
        "preset=paper",
        f"model={args.model}",
        f"task={args.task}",
        f"shots={args.shots}",
        f"task.n_train={args.n}",
        f"task.n_test={args.n}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        # Warm the model conversion cache and the MLflow store so neither side pays for them.
        timed(
            [
                *common,
                "classifier=never",
                "task.n_train=8",
                "task.n_test=8",
                f"traces.dir={tmp / 'warm'}",
            ],
            env,
            tmp,
        )
        single = timed([*common, "classifier=svm", f"traces.dir={tmp / 'single'}"], env, tmp)
        sweep = timed(
            ["-m", *common, f"classifier={SWEEP}", f"traces.dir={tmp / 'sweep'}"], env, tmp
        )
    print(f"task={args.task} model={args.model} shots={args.shots} n={args.n}")
    print(f"one run (svm):              {single:7.1f} s")
    print(f"sweep of 6 classifiers:     {sweep:7.1f} s")
    print(f"ratio sweep / one run:      {sweep / single:7.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
