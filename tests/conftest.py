"""Test-session settings shared by every test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# A site writes its audit log and its own output files under XDG_STATE_HOME / XDG_DATA_HOME; the
# suite's agents (and their child processes, which inherit this) write into a throwaway folder,
# never into the real home of whoever runs the tests.
_SITE_HOME = Path(tempfile.mkdtemp(prefix="fedflow-tests-site-"))
os.environ.setdefault("XDG_STATE_HOME", str(_SITE_HOME / "state"))
os.environ.setdefault("XDG_DATA_HOME", str(_SITE_HOME / "data"))
