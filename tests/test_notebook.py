"""notebooks/analysis.ipynb runs top to bottom on a real sweep, so it cannot rot.

A small sweep (run.py -m on the tiny models) is tracked in a temporary store; the notebook is
executed with nbclient in a fresh kernel pointed at that store. Any cell that raises fails the
test (nbclient's CellExecutionError names the cell and the error).
"""

from __future__ import annotations

import nbformat
from conftest import REPO
from nbclient import NotebookClient
from test_report import EXPERIMENT, run_py

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def _outputs(cell) -> list[dict]:
    return cell.get("outputs", [])


def test_analysis_notebook_runs_on_a_real_sweep(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_py(
        [
            "-m",
            "model=tiny_llama,tiny_opt",
            "classifier=svm,gap",
            "task.n_train=16",
            "task.n_test=8",
            "shots=2",
        ],
        tmp_path,
        uri,
    )
    monkeypatch.setenv("ADAINFER_REPORT_URI", uri)
    monkeypatch.setenv("ADAINFER_REPORT_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("ADAINFER_REPORT_OUT", str(tmp_path / "figures"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(o["output_type"] != "error" for cell in code for o in _outputs(cell))
    text = "\n".join(
        str(o.get("data", {}).get("text/markdown", "")) for cell in code for o in _outputs(cell)
    )
    assert "Tables 2/3" in text and "classifiers" in text.lower()
    images = [o for cell in code for o in _outputs(cell) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # accuracy / features per layer, exit layers, trade-off
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "acc_per_layer.png",
        "exit_layers.png",
        "features_per_layer.png",
        "tradeoff.png",
    ]


def test_notebook_is_stored_without_outputs():
    """Outputs come from running it, never from the repository (they would go stale)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert cells and all(not cell.outputs and cell.execution_count is None for cell in cells)
