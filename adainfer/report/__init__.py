"""Paper-style tables and figures from a sweep's MLflow runs (``python -m adainfer.report``).

``load_runs`` reads the finished per-task runs of an experiment into a DataFrame,
``build_tables`` turns them into the paper's tables (2/3, 4, 6, 7, 8/9) and a table of the
generated answers (``task.generate=true``), ``make_figures`` draws the per-layer, exit-layer
and trade-off figures from the runs' artifacts, and
``build_report`` does all of it, writes Markdown / CSV / PNG files and logs them as a new
MLflow run tagged ``adainfer_report=1``.
"""

from adainfer.report.figures import make_figures
from adainfer.report.publish import Report, build_report, log_report, write_tables
from adainfer.report.runs import load_runs, task_group
from adainfer.report.tables import Table, Tables, build_tables

__all__ = [
    "Report",
    "Table",
    "Tables",
    "build_report",
    "build_tables",
    "load_runs",
    "log_report",
    "make_figures",
    "task_group",
    "write_tables",
]
