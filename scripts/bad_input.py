"""Time every bad-input case from start to message: ``python run.py <mistake>`` as a user runs it.

Each case runs in a fresh process against an empty MLflow store (offline, as here), and the
script prints its exit status, wall seconds, whether a traceback or an MLflow run was left, and
the first line of the message. Config mistakes (the ``config`` kind) must answer in under
``--limit`` seconds (10 by default); data and model cases are timed too, for the record.

    python scripts/bad_input.py [--only shots] [--limit 10] [--out bad_input.md]

Run it on an otherwise idle machine: on 2 shared cores the times mean little.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ADAINFER_DATA_DIR", REPO.parent / "shared" / "data"))


@dataclass
class Case:
    name: str
    args: list[str]
    kind: str = "config"  # config | data | model | store
    env: dict[str, str] = field(default_factory=dict)
    expect: int = 2  # exit status


def _fv(name: str, data: Path) -> list[str]:
    return ["task=function_vectors", f"task.name={name}", f"task.data_dir={data}"]


def cases(bad_data: Path) -> list[Case]:
    """The mistakes a user makes, one per case; ``bad_data`` holds the broken data files."""
    tiny = ["model=tiny_llama"]
    # task.generate=true on a free-text task, small enough for its one data case to load fast
    gen = [*tiny, "task=squad", "task.generate=true", "task.n_train=8", "task.n_test=4"]
    return [
        Case("unknown model", ["model=nope"]),
        Case("unknown task", ["task=nope"]),
        Case("unknown classifier", ["classifier=nope"]),
        Case("unknown probe", ["probe=nope"]),
        Case("misspelt key", ["classifier.treshold=0.5"]),
        Case("misspelt added key", ["+classifier.treshold=0.5"]),
        Case("bad override syntax", ["shots=[1"]),
        Case("shots not a number", ["shots=abc"]),
        Case("negative shots", ["shots=-1"]),
        Case("batch_size=0", ["batch_size=0"]),
        Case("negative n_train", ["task.n_train=-3"]),
        Case("negative n_test", ["task.n_test=-5"]),
        Case("negative n_calibration", ["task.n_calibration=-1"]),
        Case("seed not a number", ["seed=abc"]),
        Case("context_length=0", ["context_length=0"]),
        Case("epsilon not a fraction", ["risk.epsilon=2"]),
        Case("delta=0", ["risk.delta=0"]),
        Case("first_layer=0", ["probe.first_layer=0"]),
        Case("unknown feature_set", ["feature_set=nope"]),
        Case("engine not a flag", ["engine=maybe"]),
        Case("trainer.devices=0", ["trainer.devices=0"]),
        Case("svm C=0", ["classifier.C=0"]),
        Case("risk without calibration", ["risk.epsilon=0.01"]),
        Case("risk with a Viterbi CRF", ["classifier=crf", "risk.epsilon=0.01"]),
        Case("engine with a CRF", [*tiny, "engine=true", "classifier=crf"]),
        Case("more shots than demos", ["task.n_train=10", "shots=20"]),
        Case("unknown FV task", _fv("antnym", DATA)),
        Case("unknown MMLU subject", ["task=mmlu", "task.subjects=[anatomyy]"]),
        Case("no data dir set", ["task=sst2"], "data", {"ADAINFER_DATA_DIR": ""}),
        Case("missing data dir", ["task=sst2", "task.data_dir=/no/such/dir"], "data"),
        Case("non-UTF-8 data", [*tiny, *_fv("bad_utf8", bad_data)], "data"),
        Case("malformed JSON", [*tiny, *_fv("bad_json", bad_data)], "data"),
        Case("missing field", [*tiny, *_fv("no_output", bad_data)], "data"),
        Case("empty data file", [*tiny, *_fv("empty", bad_data)], "data"),
        Case("empty answer", [*tiny, *_fv("blank", bad_data), "shots=0"], "data"),
        Case("query longer than context", [*tiny, "context_length=4"], "data"),
        Case("hub model offline", ["model=llama2_7b"], "model", {"HF_HUB_OFFLINE": "1"}),
        Case("tracking server down", [*tiny, "mlflow.tracking_uri=http://127.0.0.1:9"], "store"),
        Case(
            "unwritable store", [*tiny, f"mlflow.tracking_uri=sqlite:///{bad_data}/f/x.db"], "store"
        ),
        Case("unknown stage", ["stage=decid"]),
        Case("stage=decide with engine=true", ["stage=decide", "engine=true"]),
        Case("stage=extract without traces", ["stage=extract", "traces.enabled=false"]),
        Case(
            "stage=decide with nothing extracted",
            [*tiny, "stage=decide", f"traces.dir={bad_data}/no_traces"],
            "model",
        ),
        Case("generate with a CRF", [*gen, "classifier=crf"]),
        Case("generate with an oracle", [*gen, "classifier=oracle_consistent"]),
        Case("generate max_new_tokens=0", [*gen, "task.max_new_tokens=0"]),
        Case("generate negative max_new_tokens", [*gen, "task.max_new_tokens=-4"]),
        Case("generate past the context", [*gen, "task.max_new_tokens=100000"], "data"),
        Case("generate risk.answers, no generation", [*tiny, "risk.answers=equal"]),
        Case("generate risk.answers without epsilon", [*gen, "risk.answers=equal"]),
        Case("generate unknown risk.answers", [*gen, "risk.answers=all", "risk.epsilon=0.1"]),
    ]


def broken_data(root: Path) -> Path:
    """A data folder with one broken Function Vectors file per data mistake."""
    folder = root / "function_vectors" / "abstractive"
    folder.mkdir(parents=True)
    good = "".join(f'{{"input": "w{i}", "output": "v{i}"}}\n' for i in range(30))
    (folder / "bad_utf8.jsonl").write_bytes(
        good.encode() + b'{"input": "caf\xe9", "output": "x"}\n'
    )
    (folder / "bad_json.jsonl").write_text(good + '{"input": "a", "output": }\n')
    (folder / "no_output.jsonl").write_text(good + '{"input": "a"}\n')
    (folder / "empty.jsonl").write_text("")
    (folder / "blank.jsonl").write_text(good + '{"input": "a", "output": "  "}\n')
    (root / "f").write_text("a file, so nothing can be created below it\n")
    return root


def runs_left(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def run_case(case: Case, work: Path) -> dict:
    folder = Path(tempfile.mkdtemp(dir=work))
    db = folder / "mlflow.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "ADAINFER_DATA_DIR": str(DATA),
        "HF_HUB_OFFLINE": "1",
        **case.env,
    }
    # Each case is a mistake made on the paper's AdaInfer (preset=paper), not the default job.
    argv = [sys.executable, str(REPO / "run.py"), "preset=paper", *case.args]
    argv.append(f"hydra.run.dir={folder}/out")
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("adainfer: error:")), None)
    first = first or next((line for line in lines if "Error" in line or "error" in line), "")
    first = first or (lines[0] if lines else "")
    return {
        "case": case.name,
        "kind": case.kind,
        "status": proc.returncode,
        "seconds": round(seconds, 1),
        "traceback": "Traceback" in proc.stderr,
        "runs": runs_left(db),
        "message": first.replace("adainfer: error: ", "")[:110],
        "ok": proc.returncode == case.expect and "Traceback" not in proc.stderr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds a config case may take")
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chosen = [c for c in cases(broken_data(work / "data")) if args.only in c.name]
        rows = []
        for case in chosen:
            row = run_case(case, work)
            rows.append(row)
            print(
                f"{row['status']:>3} {row['seconds']:>6.1f}s  {case.kind:<6} {case.name:<28} "
                f"{row['message']}",
                flush=True,
            )
    header = "| case | kind | exit | seconds | traceback | runs | message |\n" + "|---" * 7 + "|"
    table = "\n".join(
        f"| {r['case']} | {r['kind']} | {r['status']} | {r['seconds']} | "
        f"{'yes' if r['traceback'] else 'no'} | {r['runs']} | {r['message'].replace('|', '/')} |"
        for r in rows
    )
    config = [r for r in rows if r["kind"] == "config"]
    slowest = max((r["seconds"] for r in config), default=0.0)
    bad = [r["case"] for r in rows if not r["ok"]]
    summary = (
        f"{len(rows)} cases; config mistakes: {len(config)}, slowest {slowest:.1f} s "
        f"(limit {args.limit:.0f} s: {'met' if slowest < args.limit else 'MISSED'}); "
        f"not one clear message with its exit status: {bad or 'none'}"
    )
    print(f"\n{header}\n{table}\n\n{summary}")
    if args.out:
        Path(args.out).write_text(f"{header}\n{table}\n\n{summary}\n")
    sys.exit(1 if bad or slowest >= args.limit else 0)


if __name__ == "__main__":
    main()
