"""Shared test helpers: quickstart-like site files and study files written into tmp folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
SITES = ("berlin", "vienna", "zurich")


def copy_quickstart(folder: Path) -> Path:
    """Copy the quickstart study and data into ``folder``; return the study path."""
    for name in SITES:
        shutil.copy(QUICKSTART / f"{name}.csv", folder / f"{name}.csv")
    shutil.copy(QUICKSTART / "study.toml", folder / "study.toml")
    return folder / "study.toml"


def write_study(
    folder: Path, body: str, sites: dict[str, str] | None = None, name: str = "study.toml"
) -> Path:
    """Write a study: ``body`` (top-level keys and [params]) plus one [[clients]] per site
    (site name -> data file name)."""
    text = textwrap.dedent(body).strip() + "\n"
    for site, data in (sites or {}).items():
        text += f'\n[[clients]]\nname = "{site}"\ndata = ["{data}"]\n'
    path = folder / name
    path.write_text(text)
    return path


def fedflow(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
):
    """Run the real ``fedflow`` CLI in a subprocess; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "fedflow.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
