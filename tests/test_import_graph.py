"""The package's layering, stated as data and checked on the source.

Every module of ``src/unet`` belongs to a layer (a subpackage, or one of the three modules
every layer may use). A module may import only its own layer and the layers that
``MAY_IMPORT`` lists for it; nothing imports up a layer, and no two modules import each
other at import time, directly or through others. Two more rules are checked by running a
fresh interpreter: the Lightning-free layers import neither Lightning nor torchmetrics, and
the Qt-free parts of the napari plugin import no viewer library.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unet"

# the top-level modules every layer may import
COMMON = {"errors", "labels", "distributed"}

# layer -> the layers it may import (besides itself and COMMON); lower layers first
MAY_IMPORT: dict[str, set[str]] = {
    "metrics": set(),
    "io": {"metrics"},
    "model": {"io"},
    "data": {"io", "model"},
    "inference": {"io", "model", "data"},
    "config": {"io", "model", "data", "inference"},
    "evaluation": {"metrics", "io", "model", "data", "inference", "config"},
    "predict": {"metrics", "io", "model", "data", "inference", "config"},
    "export": {"metrics", "io", "model", "data", "inference", "config"},
    "training": {"metrics", "io", "model", "data", "inference", "config", "evaluation"},
    "napari": {
        "metrics",
        "io",
        "model",
        "data",
        "inference",
        "config",
        "evaluation",
        "predict",
        "export",
        "training",
    },
}
# the layers that run without Lightning (a plain NumPy/PyTorch inference install)
LIGHTNING_FREE = ("metrics", "io", "model", "inference", "predict", "export")
# the one module of those layers that runs on a Lightning Trainer by design (trainer=ddp)
LIGHTNING_ROUTES = {"unet.predict.ranks"}
TRAINING_ONLY = ("lightning", "pytorch_lightning", "torchmetrics")
VIEWER_ONLY = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")
# the plugin's modules that a script can use without a viewer
QT_FREE_PLUGIN = ("reader", "layers", "segmentation", "training_set", "sample")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "unet"


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours an imported dotted name refers to (a module or a name in one)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, known: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """Modules of ours that ``path`` imports (at import time only, if asked)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "unet":
                target = resolve(name, known)
                if target and target != "unet":
                    found.add(target)
    return found


def test_every_subpackage_has_a_stated_layer():
    layers = {layer_of(m) for m in all_modules() if "." in m}
    top = {m.split(".")[1] for m in all_modules() if m.count(".") == 1}
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages <= set(MAY_IMPORT), sorted(subpackages - set(MAY_IMPORT))
    # at most three modules live at the top, and they are the common ones
    assert top - subpackages <= COMMON, sorted(top - subpackages - COMMON)
    assert layers


def violations() -> list[str]:
    known = all_modules()
    found = []
    for module, path in known.items():
        source = layer_of(module)
        if source in COMMON or source == "unet":
            allowed = set()
        else:
            allowed = MAY_IMPORT[source] | {source}
        for target in imports_of(path, known, top_level_only=False):
            layer = layer_of(target)
            if layer in COMMON or layer in allowed:
                continue
            found.append(f"{module} ({source}) imports {target} ({layer})")
    return found


def test_no_import_points_up_a_layer():
    assert violations() == []


def cycles() -> list[list[str]]:
    """Import-time circles among our modules (Tarjan's strongly connected components)."""
    known = all_modules()
    graph = {m: imports_of(p, known, top_level_only=True) - {m} for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles() == []


def test_the_checks_can_fail(monkeypatch):
    """The rules above would see a violation and a circle (the checker is not vacuous)."""
    known = all_modules()
    assert "unet.training.module" in known and "unet.inference.tiler" in known
    real = imports_of

    def planted(path, known, *, top_level_only):
        found = real(path, known, top_level_only=top_level_only)
        if path == known["unet.inference.tiler"]:
            found = found | {"unet.training.module"}
        if path == known["unet.training.module"]:
            found = found | {"unet.inference.tiler"}
        return found

    monkeypatch.setattr(sys.modules[__name__], "imports_of", planted)
    assert any(
        "unet.inference.tiler (inference) imports unet.training.module" in v for v in violations()
    )
    assert any({"unet.inference.tiler", "unet.training.module"} <= set(c) for c in cycles())


def run_fresh(modules: list[str], watched: tuple[str, ...]) -> str:
    code = (
        f"import sys\nimport {', '.join(modules)}\n"
        f"print(' '.join(m for m in {watched!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def lightning_free_modules() -> list[str]:
    return [m for m in all_modules() if layer_of(m) in LIGHTNING_FREE and m not in LIGHTNING_ROUTES]


def test_lightning_free_layers_import_no_training_library():
    assert run_fresh(lightning_free_modules(), TRAINING_ONLY) == ""
    # and the check can fail: the training layer does import them
    assert "lightning" in run_fresh(["unet.training.module"], TRAINING_ONLY)


@pytest.mark.parametrize("extra", [(), tuple(f"unet.napari.{m}" for m in QT_FREE_PLUGIN)])
def test_inference_and_plugin_core_import_no_viewer_library(extra):
    assert run_fresh([*lightning_free_modules(), *extra], VIEWER_ONLY) == ""
