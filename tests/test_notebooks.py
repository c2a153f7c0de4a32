"""The model developers' notebooks run top to bottom (nbclient, the venv's own kernel).

Each notebook keeps its default settings small (a few simulated bags, a few
dozen training steps), writes only to a temporary folder, and runs without
the real data in ../shared/data. A failing cell fails the test with that
cell's source and traceback; the executed notebook (and, on failure, its
temporary folder) is kept under pytest's tmp_path for a look.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Test dependencies ('.[test]'): missing, the module fails to import rather than skip.
import ipykernel  # noqa: F401 - the Python kernel the notebooks run on
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = [
    "01-explore-scans.ipynb",
    "02-calibrate-scanner.ipynb",
    "03-train-and-evaluate.ipynb",
    "04-compare-models.ipynb",
]
KERNEL = "python3"
# jupyter_client swaps these for sys.executable when it starts the kernel.
_INTERPRETER_ALIASES = {"python", f"python{sys.version_info[0]}", "python{0}.{1}".format(*sys.version_info[:2])}


def _kernel_runs_this_python() -> None:
    """The 'python3' kernel must be this interpreter (the venv's), or nii is not importable."""
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.skip(f"no {KERNEL!r} Jupyter kernel found (ipykernel in this environment provides one)")
    command = spec.argv[0]
    if command not in _INTERPRETER_ALIASES and Path(command).resolve() != Path(sys.executable).resolve():
        pytest.fail(f"the {KERNEL!r} kernel spec in {spec.resource_dir} runs {command}, not this interpreter "
                    f"({sys.executable}); remove that kernel spec so ipykernel's own is used", pytrace=False)


def test_notebook_list_is_complete() -> None:
    """Every notebook in notebooks/ is run here; none is forgotten."""
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_runs_this_python()
    # The kernel inherits this: the notebook's tempfile.mkdtemp() folder lands under
    # tmp_path, so a notebook that fails before its clean-up cell leaves nothing behind.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    path = NOTEBOOK_DIR / name
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        f"{name} is saved with outputs; strip them before committing")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.monotonic()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        nbformat.write(notebook, tmp_path / name)
        pytest.fail(f"{name}: a cell failed (executed notebook: {tmp_path / name})\n{err}", pytrace=False)
    finally:
        print(f"{name}: {time.monotonic() - started:.0f} s")
    nbformat.write(notebook, tmp_path / name)
    errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {errors}"
