"""The notebooks in examples/ run from top to bottom without error (their cells also assert the identities they
show). Committed without outputs; executed here with nbclient (installed with nbmake by the test extra), so the
README's test command runs them; ``pytest --nbmake examples`` runs them alone."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_examples_exist():
    assert {p.name for p in NOTEBOOKS} >= {"boneless_flow.ipynb", "two_d.ipynb", "trained_vs_ideal.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    if path.name == "trained_vs_ideal.ipynb":
        pytest.importorskip("diffusers")  # the adapters extra
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: has outputs"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # a cell that raises fails the test (CellExecutionError names the cell); the timeout only stops a hung kernel
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
