"""The README is the map: its layout block names real paths and every module, it stays short,
and its links into docs/ lead somewhere.

The layout block is the first fenced code block under the `## Layout` heading. Each line is a
path and, after it, a description. A name ending in `/` is a directory; the lines indented
below it are inside it. So

    lumi_jax/
      data/
        text.py      reading text

names `lumi_jax/`, `lumi_jax/data/` and `lumi_jax/data/text.py`, relative to the repository root.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = "lumi_jax"
MAX_README_CHARS = 10_000


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def layout_block(text: str) -> list[str]:
    """The lines of the first fenced code block after the `## Layout` heading."""
    lines = text.splitlines()
    heading = next((i for i, line in enumerate(lines) if re.match(r"##\s+Layout\b", line)), None)
    assert heading is not None, "README.md has no '## Layout' heading"
    start = next((i for i in range(heading + 1, len(lines)) if lines[i].lstrip().startswith("```")), None)
    assert start is not None, "README.md: no fenced code block under '## Layout'"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("```")), None)
    assert end is not None, "README.md: the layout code block under '## Layout' is never closed"
    return lines[start + 1:end]


def parse_layout(lines: list[str]) -> list[str]:
    """Every path the layout names, relative to the repository root, in the order listed."""
    paths: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, directory path ending in '/')
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = line.split()[0]
        assert "/" in name or "." in name, (
            f"README layout line {number}: '{name}' is not a path (a file name or a directory ending in '/'); "
            f"each line of the layout block must start with one: {line!r}")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = (parents[-1][1] if parents else "") + name
        paths.append(path)
        if name.endswith("/"):
            parents.append((indent, path))
    return paths


def package_modules() -> list[str]:
    """Every .py module of the package, relative to the root, without __init__.py and caches."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    )


def test_parse_layout_follows_indentation():
    lines = ["lumi_jax/", "  errors.py   one line", "  data/", "    text.py   reading",
             "  model.py", "config/", "  recipes/   recipes", "tests/"]
    assert parse_layout(lines) == ["lumi_jax/", "lumi_jax/errors.py", "lumi_jax/data/", "lumi_jax/data/text.py",
                                   "lumi_jax/model.py", "config/", "config/recipes/", "tests/"]


def test_readme_is_at_most_10000_characters():
    length = len(readme_text())
    assert length <= MAX_README_CHARS, (
        f"README.md is {length:,} characters, over {MAX_README_CHARS:,}: it is the map; move detail into docs/")


def test_every_path_in_the_layout_exists():
    missing = [path for path in parse_layout(layout_block(readme_text())) if not (ROOT / path).exists()]
    assert not missing, "README layout lists paths that do not exist: " + ", ".join(missing)


def test_layout_entries_ending_in_a_slash_are_directories():
    not_dirs = [path for path in parse_layout(layout_block(readme_text()))
                if path.endswith("/") and (ROOT / path).exists() and not (ROOT / path).is_dir()]
    assert not not_dirs, "README layout marks these as directories, but they are files: " + ", ".join(not_dirs)


def test_every_package_module_is_listed():
    listed = set(parse_layout(layout_block(readme_text())))
    unlisted = [module for module in package_modules() if module not in listed]
    assert not unlisted, "modules missing from the README layout block: " + ", ".join(unlisted)


def test_layout_lists_the_top_level_directories():
    listed = set(parse_layout(layout_block(readme_text())))
    absent = [name for name in ("lumi_jax/", "config/", "tests/", "benchmarks/", "docs/") if name not in listed]
    assert not absent, "the README layout block should list: " + ", ".join(absent)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Link targets that are paths inside the repository (not URLs, not in-page anchors)."""
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_every_docs_link_in_the_readme_resolves():
    links = [t for t in relative_links(readme_text()) if t.lstrip("./").startswith("docs")]
    assert links, "README.md links to nothing in docs/; it should link the manual"
    broken = [t for t in links if not (ROOT / t).exists()]
    assert not broken, "README links to docs/ paths that do not exist: " + ", ".join(broken)


DOC_PAGES = sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else []


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_between_docs_pages_resolve(page):
    broken = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to paths that do not exist: " + ", ".join(broken)
