"""Every file the README and docs/ point to exists in a clone (no links outside the repository)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(r"`((?:\.\./|docs/|examples/)[^`\s<>*]+)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_linked_files_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (page.parent / target).resolve().exists():
            missing.append(target)
    for target in CODE_PATH.findall(text):
        base = page.parent if target.startswith("..") else ROOT
        path = (base / target).resolve()
        if not path.exists():
            missing.append(target)
        elif ROOT not in path.parents and path != ROOT:
            missing.append(f"{target} (outside the repository)")
    assert not missing, f"{page.name} points to missing files: {missing}"


def test_design_doc_ships_with_the_repository() -> None:
    assert (ROOT / "docs" / "design.md").is_file()
    assert "../shared" not in (ROOT / "README.md").read_text(encoding="utf-8")
