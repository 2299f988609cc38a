"""Write the API reference: one page per module of the ``unet`` package.

Run by mkdocs-gen-files at build time (mkdocs.yml). It walks ``src/unet/**/*.py`` whatever
the package's layout, so subpackages added or modules moved need no change here. Each page
holds one mkdocstrings directive (``::: unet.x.y``); mkdocstrings-python reads the source
statically (griffe), so modules whose import needs optional packages (napari, zarr,
OpenVINO) are documented without importing them. ``reference/SUMMARY.md`` is the section's
navigation, read by mkdocs-literate-nav.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "unet"


def module_parts(path: Path) -> tuple[str, ...] | None:
    """The dotted name of a source file as a tuple, or None for files with no page.

    A package's ``__init__.py`` documents the package itself; private modules (``_x.py``)
    and ``__main__.py`` get no page of their own.
    """
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        return parts[:-1]
    if parts[-1].startswith("_"):
        return None
    return parts


def main() -> None:
    """Write ``reference/<module path>.md`` for every module and the section's SUMMARY."""
    nav = mkdocs_gen_files.Nav()
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = module_parts(path)
        if parts is None:
            continue
        is_package = path.name == "__init__.py"
        doc_path = Path(*parts, "index.md") if is_package else Path(*parts).with_suffix(".md")
        nav[parts] = doc_path.as_posix()
        with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
            page.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
        mkdocs_gen_files.set_edit_path(Path("reference", doc_path), path.relative_to(ROOT))
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


main()
