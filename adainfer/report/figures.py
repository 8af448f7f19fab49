"""The paper's figures from the runs' artifacts, one panel per (model, task, shots).

- ``acc_per_layer``: accuracy of each layer's logit-lens prediction (``acc_layer``; Fig. 1);
- ``features_per_layer``: mean gap, top_prob and cosine features per layer (Figs. 3/4);
- ``exit_layers``: histogram of the exit layer of each test instance, per classifier;
- ``tradeoff``: accuracy against FLOPs ratio over each policy's thresholds, with the never-exit
  and oracle points.

Figures are drawn on matplotlib's Agg canvas without pyplot, so building a report never
touches the caller's (e.g. a notebook's) plotting state. Panels are paged 16 to a file.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow import MlflowClient

from adainfer.report.runs import client_for, quiet_downloads
from adainfer.report.tables import sort_rows

FEATURE_COLUMNS = ("gap", "top_prob", "cos_attn", "cos_mlp", "cos_hidden")
REFERENCE_MARKERS = {"never": "s", "oracle_consistent": "^", "oracle_gold": "*"}
PANELS_PER_FILE = 16


class Artifacts:
    """Downloads each run artifact and metric history once, for all the figures."""

    def __init__(self, client: MlflowClient, folder: Path) -> None:
        self.client = client
        self.folder = folder
        self._frames: dict[tuple[str, str], pd.DataFrame | None] = {}

    def frame(self, run_id: str, name: str) -> pd.DataFrame | None:
        """A Parquet artifact of a run, or None when the run has none."""
        if (run_id, name) not in self._frames:
            try:
                dst = self.folder / run_id
                dst.mkdir(exist_ok=True)
                with quiet_downloads():
                    path = self.client.download_artifacts(run_id, name, str(dst))
                self._frames[run_id, name] = pd.read_parquet(path)
            except Exception:  # noqa: BLE001 - missing artifact: the panel says so
                self._frames[run_id, name] = None
        return self._frames[run_id, name]

    def history(self, run_id: str, key: str) -> pd.Series:
        """A per-layer metric (step = layer) as a Series indexed by layer."""
        points = self.client.get_metric_history(run_id, key)
        return pd.Series({p.step: p.value for p in points}, dtype=float).sort_index()


def _label(run: Any, runs: pd.DataFrame) -> str:
    """Legend label: the classifier, plus the feature set where the selection varies it."""
    if runs.feature_set.nunique() > 1:
        return f"{run.classifier}/{run.feature_set}"
    return str(run.classifier)


def _missing(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small")


def _acc_per_layer(ax: Axes, runs: pd.DataFrame, data: Artifacts) -> None:
    curve = data.history(runs.iloc[0].run_id, "acc_layer")
    if curve.empty:
        _missing(ax, "acc_layer")
    ax.plot(curve.index, curve.values, marker="o")
    ax.set(xlabel="layer", ylabel="accuracy", ylim=(-0.05, 1.05))


def _features_per_layer(ax: Axes, runs: pd.DataFrame, data: Artifacts) -> None:
    table = data.frame(runs.iloc[0].run_id, "layer_features.parquet")
    if table is None:
        return _missing(ax, "layer_features.parquet")
    test = table[table.split == "test"] if "split" in table else table
    means = test.groupby("layer")[[c for c in FEATURE_COLUMNS if c in test]].mean()
    for column in means:
        ax.plot(means.index, means[column], marker=".", label=column)
    ax.set(xlabel="layer", ylabel="mean over test instances")
    _legend(ax)


def _exit_layers(ax: Axes, runs: pd.DataFrame, data: Artifacts) -> None:
    exits = {run.run_id: data.frame(run.run_id, "test_exits.parquet") for run in runs.itertuples()}
    shown = runs[[exits[run_id] is not None for run_id in runs.run_id]]
    if shown.empty:
        return _missing(ax, "test_exits.parquet")
    last = max(int(exits[run_id].exit_layer.max()) for run_id in shown.run_id)
    layers = np.arange(1, max(last, int(pd.to_numeric(shown.num_layers).max())) + 1)
    width = 0.8 / len(shown)
    for i, run in enumerate(shown.itertuples()):  # side by side: one colour per classifier
        counts = exits[run.run_id].exit_layer.value_counts().reindex(layers, fill_value=0)
        offset = (i - (len(shown) - 1) / 2) * width
        ax.bar(layers + offset, counts.to_numpy(), width, label=_label(run, runs))
    ax.set(xlabel="exit layer", ylabel="test instances")
    _legend(ax)


def _tradeoff(ax: Axes, runs: pd.DataFrame, data: Artifacts) -> None:
    references = pd.DataFrame(columns=["policy", "acc", "flops_ratio"])
    for run in runs.itertuples():
        curve = data.frame(run.run_id, "tradeoff.parquet")
        if curve is None:
            continue
        swept = curve[curve.threshold.notna()].sort_values("flops_ratio")
        if not swept.empty:
            ax.plot(swept.flops_ratio, swept.acc, marker=".", label=_label(run, runs))
        if references.empty:
            references = curve[curve.threshold.isna()]
    for ref in references.itertuples():
        marker = REFERENCE_MARKERS.get(ref.policy, "x")
        ax.scatter(ref.flops_ratio, ref.acc, marker=marker, color="black", label=ref.policy)
    if not ax.get_legend_handles_labels()[0]:
        _missing(ax, "tradeoff.parquet")
    ax.set(xlabel="FLOPs ratio", ylabel="accuracy", ylim=(-0.05, 1.05))
    _legend(ax)


Panel = Callable[[Axes, pd.DataFrame, Artifacts], None]
KINDS: dict[str, Panel] = {
    "acc_per_layer": _acc_per_layer,
    "features_per_layer": _features_per_layer,
    "exit_layers": _exit_layers,
    "tradeoff": _tradeoff,
}


def _draw(kind: str, panels: list[tuple[str, pd.DataFrame]], data: Artifacts, path: Path) -> None:
    draw = KINDS[kind]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, runs) in zip(axes, panels, strict=False):
        draw(ax, runs, data)
        if kind != "tradeoff":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(kind.replace("_", " "))
    fig.savefig(path, dpi=100)


def make_figures(
    runs: pd.DataFrame, out: Path, tracking_uri: str | None = None, kinds: tuple[str, ...] = ()
) -> list[Path]:
    """Draw each figure kind (default: all) for ``runs`` into ``out`` as PNG; return the paths.

    Panels use the runs fitted on their own task; per-layer curves come from the first of them,
    since every classifier of a (model, task, shots) sees the same test records.
    """
    out.mkdir(parents=True, exist_ok=True)
    intra = runs[runs.fit_setting == "intra"]
    points = sort_rows(intra, ["model", "task", "shots", "classifier", "feature_set"])
    panels = [
        (f"{model} · {task} · {shots}-shot", group)
        for (model, task, shots), group in points.groupby(["model", "task", "shots"], sort=False)
    ]
    if not panels:
        return []
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Artifacts(client_for(tracking_uri), Path(tmp))
        for kind in kinds or tuple(KINDS):
            pages = [
                panels[i : i + PANELS_PER_FILE] for i in range(0, len(panels), PANELS_PER_FILE)
            ]
            for number, page in enumerate(pages, start=1):
                suffix = f"-{number}" if len(pages) > 1 else ""
                path = out / f"{kind}{suffix}.png"
                _draw(kind, page, data, path)
                paths.append(path)
    return paths
