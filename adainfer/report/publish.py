"""Build a whole report: tables and figures on disk, and the same files as an MLflow run.

The report run is named ``report``, lives in the experiment it summarises and is tagged
``adainfer_report=1`` (plus the selection's tags, so it shows up beside its sweep in the UI);
``load_runs`` skips such runs, so a report is never an input of a later one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adainfer.errors import AdaInferError
from adainfer.report.figures import make_figures
from adainfer.report.runs import REPORT_TAG, client_for, experiment_id, load_runs
from adainfer.report.tables import Tables, build_tables


@dataclass
class Report:
    """What ``build_report`` produced: inputs, tables, files and the MLflow run holding them."""

    runs: pd.DataFrame
    tables: Tables
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None

    def markdown(self) -> str:
        """Every table (and every skipped table's reason) as one Markdown document."""
        parts = [f"# AdaInfer report ({len(self.runs)} runs)\n"]
        parts += [table.markdown() for table in self.tables.tables]
        parts += [f"- skipped `{name}`: {why}" for name, why in self.tables.skipped.items()]
        parts += [f"\n![{path.stem}]({path.name})" for path in self.figures]
        return "\n".join(parts) + "\n"


def write_tables(tables: Tables, out: Path) -> list[Path]:
    """Each table as ``<name>.md`` and ``<name>.csv`` (full precision) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables.tables:
        (out / f"{table.name}.md").write_text(table.markdown())
        table.frame.to_csv(out / f"{table.name}.csv", index=False)
        paths += [out / f"{table.name}.md", out / f"{table.name}.csv"]
    return paths


def log_report(
    files: list[Path],
    experiment: str,
    tags: dict[str, str] | None = None,
    parent: str | None = None,
    n_runs: int = 0,
    tracking_uri: str | None = None,
) -> str:
    """A new FINISHED run ``report`` in ``experiment`` holding ``files``; returns its id.

    It carries the selection's ``tags`` (so it sits beside its sweep in the UI) and the
    ``adainfer_report`` tag that keeps it out of every later report's inputs.
    """
    client = client_for(tracking_uri)
    run = client.create_run(
        experiment_id(client, experiment),
        run_name="report",
        tags={k: v for k, v in (tags or {}).items() if not k.startswith("mlflow.")}
        | {REPORT_TAG: "1"},
    )
    run_id = run.info.run_id
    try:
        selection = {"experiment": experiment, "tags": tags or {}, "parent": parent}
        client.log_param(run_id, "selection", json.dumps(selection, sort_keys=True)[:500])
        client.log_param(run_id, "n_runs", n_runs)
        for path in files:
            client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def build_report(
    experiment: str,
    out: Path,
    tags: dict[str, str] | None = None,
    parent: str | None = None,
    tracking_uri: str | None = None,
    figures: bool = True,
    log: bool = True,
) -> Report:
    """Select runs, write every table and figure into ``out`` and (``log``) log them to MLflow."""
    runs = load_runs(experiment, tags, parent, tracking_uri)
    report = Report(runs, build_tables(runs))
    try:
        report.files = write_tables(report.tables, out)
        if figures:
            report.figures = make_figures(runs, out, tracking_uri)
        (out / "report.md").write_text(report.markdown())
    except OSError as err:
        raise AdaInferError(
            f"cannot write the report into {out}: {err}", "pass another --out"
        ) from None
    report.files += [*report.figures, out / "report.md"]
    if log:
        report.run_id = log_report(report.files, experiment, tags, parent, len(runs), tracking_uri)
    return report
