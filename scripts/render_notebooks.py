"""Execute the notebooks and write them, outputs included, to docs/notebooks/.

    UNET_DATA_DIR=../shared/data python scripts/render_notebooks.py [notebooks/NAME.ipynb ...]

The notebooks in ``notebooks/`` are kept without outputs (a pre-commit hook strips them);
the copies in ``docs/notebooks/`` are executed here, so that GitHub shows them with their
pictures and the README can link them. The tests execute the same notebooks
(``tests/tools/test_notebooks.py``) with :func:`execute`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs" / "notebooks"


def execute(path: str | Path, timeout: int = 600, env: dict | None = None) -> nbformat.NotebookNode:
    """Run every cell of a notebook in a fresh kernel, in the notebook's folder, with this
    checkout's ``src`` first on the kernel's import path; returns the executed notebook.
    A failing cell raises ``nbclient.exceptions.CellExecutionError`` naming the cell."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    kernel_env = dict(os.environ if env is None else env)
    kernel_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [kernel_env.get("PYTHONPATH")])]
    )
    kernel_env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=kernel_env)
    return notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: all of notebooks/")
    parser.add_argument("--output", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb")):
        start = time.perf_counter()
        executed = execute(path)
        nbformat.write(executed, args.output / path.name)
        seconds = time.perf_counter() - start
        print(f"{path.name} -> {args.output / path.name} ({seconds:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
