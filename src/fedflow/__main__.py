"""``python -m fedflow``: the ``fedflow`` command."""

from __future__ import annotations

import sys

from fedflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
