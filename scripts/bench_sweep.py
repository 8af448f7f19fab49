"""How much a classifier sweep costs over a single run, now that the LLM runs once; and how
much a grid gains from running its jobs in parallel.

Default mode: times, in one session and on fresh caches, (a) one job and (b) a Hydra multirun
over six exit policies on the same task, then prints their wall times and the ratio (target:
<= 1.3). ``--parallel N``: times one grid (``--grid``, one LLM pass per point) through the
submitit launcher with 1 and then N jobs at a time (``hydra.sweeper.max_batch_size``), each
in its own process and on fresh traces, and prints the speed-up. Everything runs as a user
would, ``python run.py ...`` in a subprocess.

    python scripts/bench_sweep.py                     # SST-2, 5-shot, SmolLM2 (defaults)
    python scripts/bench_sweep.py --model tiny_llama  # a quick smoke run
    python scripts/bench_sweep.py --parallel 2 --model tiny_llama --n 100   # 1 vs 2 workers
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
    parser.add_argument(
        "--parallel", type=int, default=0, help="time the grid with 1 and this many workers"
    )
    parser.add_argument("--grid", default="seed=0,1,2,3", help="the grid of --parallel")
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="shared by --parallel's workers"
    )
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
    if args.parallel:
        parallel(args, common, env)
        return
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


def parallel(args: argparse.Namespace, common: list[str], env: dict[str, str]) -> None:
    """The same grid through submitit_local, 1 then ``args.parallel`` jobs at a time."""
    grid = ["-m", *common, *args.grid.split(), "classifier=svm"]
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=600"]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        warm = [*common, "classifier=never", "task.n_train=8", "task.n_test=8"]
        timed([*warm, f"traces.dir={tmp / 'warm'}"], env, tmp)
        for workers in (1, args.parallel):
            where = [f"traces.dir={tmp / f'traces{workers}'}"]
            where += [f"hydra.sweep.dir={tmp / f'm{workers}'}"]
            # The basic sweeper hands the launcher this many jobs at a time and waits for them.
            at_once = [f"hydra.sweeper.max_batch_size={workers}"]
            # Each worker gets its share of the cores: N torch processes with a thread per core
            # each would oversubscribe them, and OpenMP's spinning threads slow each other down.
            threads = {"OMP_NUM_THREADS": str(max(1, args.cores // workers))}
            seconds[workers] = timed([*grid, *launcher, *at_once, *where], env | threads, tmp)
    print(f"task={args.task} model={args.model} shots={args.shots} n={args.n} grid={args.grid}")
    for workers, took in seconds.items():
        threads = max(1, args.cores // workers)
        print(f"{workers} worker(s) at a time, {threads} thread(s) each: {took:7.1f} s")
    one, many = seconds[1], seconds[args.parallel]
    print(f"speed-up 1 -> {args.parallel} workers: {one / many:7.2f}  (ideal {args.parallel})")


if __name__ == "__main__":
    main()
