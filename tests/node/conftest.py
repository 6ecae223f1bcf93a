from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.node.postgres import PostgresServer, ensure_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's package); its DSN is in $FEDFLOW_TEST_DSN."""
    pytest.importorskip("psycopg")
    bin_dir, why = ensure_postgres()
    if bin_dir is None:
        pytest.skip(why or "PostgreSQL unavailable")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    previous = os.environ.get("FEDFLOW_TEST_DSN")
    os.environ["FEDFLOW_TEST_DSN"] = server.dsn
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop("FEDFLOW_TEST_DSN", None)
        else:
            os.environ["FEDFLOW_TEST_DSN"] = previous
        server.stop()
