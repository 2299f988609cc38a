"""The README as a front page and the docs site's files (fast; no mkdocs run).

`mkdocs build --strict` (.ci/run) checks the built site; these tests check what a reader of
the repository meets without building it: a short README with the results near the top,
relative links that lead to files, and a site navigation that names existing pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
# nav entries written at build time by docs/gen_ref_pages.py (mkdocs-gen-files), not on disk
GENERATED = {"reference/"}

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    """README.md and every Markdown page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a Markdown file outside code, without their anchor.

    Skips URLs (``scheme:``) and links to an anchor of the same page.
    """
    targets, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue
            targets.append(target.split("#", 1)[0])
    return targets


def nav_entries(node) -> list[str]:
    """Every file or folder named in mkdocs.yml's nav, however deeply nested."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [entry for item in node for entry in nav_entries(item)]
    if isinstance(node, dict):
        return [entry for value in node.values() for entry in nav_entries(value)]
    return []


def mkdocs_config() -> dict:
    """mkdocs.yml, read as plain YAML (it uses no Python tags)."""
    return yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    table = [i for i, line in enumerate(lines[:120], 1) if line.startswith("| data set")]
    assert table, "the results table (a line starting with '| data set') is not in lines 1-120"


def is_generated(path: Path, target: str) -> bool:
    """Whether a link from ``path`` leads into a folder the docs build generates."""
    resolved = (path.parent / target).resolve()
    return any(resolved.is_relative_to((DOCS / folder).resolve()) for folder in GENERATED)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(path):
    missing = [
        t
        for t in relative_links(path)
        if t and not (path.parent / t).exists() and not is_generated(path, t)
    ]
    assert not missing, f"{path.relative_to(ROOT)}: links to missing files: {missing}"


def test_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "[a](a.md#x) ![b](img/b.png) [c](https://x.org) [d](#here) `[e](e.md)`\n"
        "```\n[f](f.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["a.md", "img/b.png"]


def test_nav_names_only_existing_files():
    entries = nav_entries(mkdocs_config()["nav"])
    assert entries, "mkdocs.yml has no nav"
    missing = [e for e in entries if e not in GENERATED and not (DOCS / e).exists()]
    assert not missing, f"mkdocs.yml nav names files that do not exist under docs/: {missing}"


def test_generated_nav_entries_have_their_script():
    config = mkdocs_config()
    scripts = [
        script
        for plugin in config["plugins"]
        if isinstance(plugin, dict) and "gen-files" in plugin
        for script in plugin["gen-files"]["scripts"]
    ]
    assert scripts and all((ROOT / s).is_file() for s in scripts)
    source = "".join((ROOT / s).read_text(encoding="utf-8") for s in scripts)
    for entry in GENERATED & set(nav_entries(config["nav"])):
        assert f'"{entry.rstrip("/")}' in source, f"no gen-files script writes {entry}"


def test_readme_links_every_docs_page():
    linked = {Path(t).as_posix() for t in relative_links(README)}
    pages = [e for e in nav_entries(mkdocs_config()["nav"]) if e.endswith(".md")]
    unlinked = [p for p in pages if p != "index.md" and f"docs/{p}" not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"
