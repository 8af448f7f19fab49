"""Command line of the report: select runs, print the tables, save and log everything.

python -m adainfer.report --experiment adainfer --tag sweep_dir=multirun/2026-01-01/12-00-00
python -m adainfer.report --parent <suite run id> --out report/qa --no-log
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adainfer.errors import AdaInferError
from adainfer.report.publish import build_report
from adainfer.report.runs import parse_tags


def parser() -> argparse.ArgumentParser:
    """The report's arguments (also used by ``scripts/compare.py``)."""
    parse = argparse.ArgumentParser(
        prog="python -m adainfer.report",
        description="Paper-style tables and figures from the MLflow runs of a sweep.",
    )
    parse.add_argument("--experiment", default="adainfer", help="MLflow experiment name")
    parse.add_argument(
        "--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else MLflow's default"
    )
    parse.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with this tag, e.g. sweep_dir=multirun/... (repeatable)",
    )
    parse.add_argument("--parent", default=None, help="keep the nested runs of this suite run")
    parse.add_argument("--out", type=Path, default=Path("report"), help="output folder")
    parse.add_argument("--no-figures", action="store_true", help="tables only (no downloads)")
    parse.add_argument("--no-log", action="store_true", help="do not log a 'report' MLflow run")
    return parse


def main(argv: list[str] | None = None) -> None:
    """Run the report; a user mistake ends with one message and exit status 2."""
    args = parser().parse_args(argv)
    try:
        report = build_report(
            args.experiment,
            args.out,
            tags=parse_tags(args.tag),
            parent=args.parent,
            tracking_uri=args.tracking_uri,
            figures=not args.no_figures,
            log=not args.no_log,
        )
    except AdaInferError as err:
        print(f"adainfer: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(report.runs)} runs from experiment {args.experiment!r}\n")
    for table in report.tables.tables:
        print(table.markdown())
    for name, why in report.tables.skipped.items():
        print(f"skipped {name}: {why}")
    print(f"\nwrote {len(report.files)} files to {args.out}")
    if report.run_id:
        print(f"logged as MLflow run {report.run_id} (experiment {args.experiment!r})")
