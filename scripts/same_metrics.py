"""Run results.sh's SmolLM2 SST-2 and rules grid on a checkout; compare two such runs' metrics.

The behaviour-unchanged check: the grid ``scripts/results.sh`` runs for SmolLM2 on SST-2 and the
``rules`` suite (``preset=paper shots=0,5 classifier=svm,crf,gap task.n_train=100
task.n_test=100``), run with a checkout's own ``run.py`` and ``.venv``, into a fresh MLflow sqlite
store and a fresh trace folder (so the LLM really runs), then every run's metrics compared with
another store's.

    # the grid on a checkout (its .venv/bin/python, cwd = the checkout); OUT must not hold a store
    python scripts/same_metrics.py run /path/to/checkout OUT
    # compare two folders written by `run` (or two sqlite files); exit 0 when every metric equal
    python scripts/same_metrics.py compare BASELINE_OUT OTHER_OUT
    # both: run on a checkout, then compare with a baseline folder
    python scripts/same_metrics.py check /path/to/checkout OUT BASELINE_OUT

``OUT`` gets ``mlflow.db`` (experiment ``results``), ``traces/``, ``multirun/`` (Hydra's job
logs) and ``run.log``. The data sets come from ``$ADAINFER_DATA_DIR``, else
``<checkout>/../shared/data``. A run is identified by its model, task, shots, classifier,
feature set and, for a suite member, the suite; every metric is compared at every step (the
per-layer curves too), exactly. Differences are printed per metric as the largest absolute
difference over runs and steps, with the run where it occurs.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

EXPERIMENT = "results"
GRID = [
    "preset=paper",  # results.sh's jobs start from the paper's AdaInfer, not the default job
    "model=smollm2_135m",
    "task=sst2,rules",
    "shots=0,5",
    "classifier=svm,crf,gap",
    "task.n_train=100",
    "task.n_test=100",
    f"mlflow.experiment={EXPERIMENT}",
]
KEY = ("model", "suite", "task", "shots", "classifier", "feature_set")


def store_uri(path: Path) -> str:
    """A folder written by ``run`` (its mlflow.db), or a sqlite file itself."""
    db = path / "mlflow.db" if path.is_dir() else path
    if not db.is_file():
        raise SystemExit(f"no MLflow store at {db}")
    return f"sqlite:///{db.resolve()}"


def run_grid(checkout: Path, out: Path, python: str | None) -> None:
    checkout, out = checkout.resolve(), out.resolve()
    if (out / "mlflow.db").exists() or (out / "traces").exists():
        raise SystemExit(f"{out} already holds a store or traces: give a fresh folder")
    out.mkdir(parents=True, exist_ok=True)
    python = python or str(checkout / ".venv" / "bin" / "python")
    env = os.environ | {
        "ADAINFER_DATA_DIR": os.environ.get(
            "ADAINFER_DATA_DIR", str(checkout.parent / "shared" / "data")
        )
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the store is given as an override
    command = [
        python,
        "run.py",
        "-m",
        *GRID,
        f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}",
        f"traces.dir={out / 'traces'}",
        f"hydra.sweep.dir={out / 'multirun'}",
    ]
    head = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    note = f"# checkout {checkout} at {head or '?'}{' (uncommitted changes)' if dirty else ''}\n"
    note += f"# cd {shlex.quote(str(checkout))} && {shlex.join(command)}\n"
    print(note, end="", flush=True)
    start = time.monotonic()
    with open(out / "run.log", "w") as log:
        log.write(note)
        log.flush()
        done = subprocess.run(command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"# exit status {done.returncode} after {time.monotonic() - start:.0f} s; log {log.name}")
    if done.returncode:
        raise SystemExit(done.returncode)


def read_runs(uri: str) -> dict[tuple, dict[str, list[tuple[int, float]]]]:
    """Finished runs of the experiment by KEY: metric -> [(step, value)] in step order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise SystemExit(f"no experiment {EXPERIMENT!r} at {uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=50000)
    unfinished = [r.info.run_name for r in runs if r.info.status != "FINISHED"]
    if unfinished:
        raise SystemExit(f"{uri}: runs not FINISHED: {', '.join(unfinished)}")
    table = {}
    for run in runs:
        key = tuple(run.data.params.get(k, "") for k in KEY)
        if key in table:
            raise SystemExit(f"{uri}: two runs for {dict(zip(KEY, key, strict=True))}")
        table[key] = {
            name: sorted(
                (m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)
            )
            for name in run.data.metrics
        }
    return table


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def compare(a: Path, b: Path) -> bool:
    """Print how the two stores differ; True when every run's every metric is equal."""
    runs_a, runs_b = read_runs(store_uri(a)), read_runs(store_uri(b))
    print(f"# {a}: {len(runs_a)} runs; {b}: {len(runs_b)} runs")
    equal = True
    for side, missing in ((b, runs_a.keys() - runs_b.keys()), (a, runs_b.keys() - runs_a.keys())):
        for key in sorted(missing):
            equal = False
            print(f"only in one store (missing from {side}): {dict(zip(KEY, key, strict=True))}")
    worst: dict[str, tuple[float, str]] = {}  # metric -> (max abs diff, where)
    differing: dict[str, int] = defaultdict(int)
    compared = 0
    for key in sorted(runs_a.keys() & runs_b.keys()):
        where = "/".join(str(k) for k in key if k)
        ma, mb = runs_a[key], runs_b[key]
        for name in sorted(ma.keys() ^ mb.keys()):
            equal = False
            print(f"{where}: metric {name} logged in only one store")
        for name in sorted(ma.keys() & mb.keys()):
            compared += 1
            sa, sb = ma[name], mb[name]
            if [s for s, _ in sa] != [s for s, _ in sb]:
                equal = False
                differing[name] += 1
                worst[name] = (math.inf, f"{where} (steps differ)")
                continue
            diffs = [abs(x - y) for (_, x), (_, y) in zip(sa, sb, strict=True) if not _same(x, y)]
            if diffs:
                equal = False
                differing[name] += 1
                if max(diffs) > worst.get(name, (-1.0, ""))[0]:
                    worst[name] = (max(diffs), where)
    print(f"# {compared} (run, metric) pairs compared, every step")
    for name in sorted(worst):
        gap, where = worst[name]
        print(f"DIFF {name}: {differing[name]} runs differ, max |a - b| = {gap:.6g} ({where})")
    print("EQUAL: every run's metrics are identical" if equal else "NOT EQUAL")
    return equal


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the grid on a checkout into a fresh folder")
    check = sub.add_parser("check", help="run, then compare with a baseline folder")
    for p in (run, check):
        p.add_argument("checkout", type=Path, help="repository root holding run.py and .venv")
        p.add_argument("out", type=Path, help="fresh folder for mlflow.db, traces/, run.log")
        p.add_argument("--python", default=None, help="default: <checkout>/.venv/bin/python")
    check.add_argument("baseline", type=Path, help="a folder written by `run` (or a .db)")
    cmp_ = sub.add_parser("compare", help="compare two folders written by `run` (or .db files)")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command in ("run", "check"):
        run_grid(args.checkout, args.out, args.python)
    if args.command == "compare":
        sys.exit(0 if compare(args.a, args.b) else 1)
    if args.command == "check":
        sys.exit(0 if compare(args.baseline, args.out) else 1)


if __name__ == "__main__":
    main()
