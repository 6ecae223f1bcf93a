"""Connectors: how the coordinator reaches each site's node agent (local subprocess, SSH)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fedflow.connectors.base import Connector, StreamConnector
from fedflow.connectors.forkserver import ForkServer
from fedflow.connectors.local import LocalConnector

if TYPE_CHECKING:
    from fedflow.study import Client, Study

__all__ = ["Connector", "ForkServer", "LocalConnector", "StreamConnector", "connector_for"]


def connector_for(
    client: Client,
    study: Study,
    *,
    log_path: Path,
    output_dir: Path,
    forkserver: ForkServer | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Connector:
    """Return the connector for a study client: a local process, or SSH when it has a hostname.

    ``output_dir`` is the local folder for the site's outputs (used as-is by local sites; remote
    sites write at the site and the files are fetched there). Local sites are forked from
    ``forkserver`` when one is given; ``progress(what, done, total)`` hears of file transfers.
    """
    # the study's own machines: the agent runs owned (paths, plug-ins, min_count down to 1)
    agent_args = ["--owned", *(["--verbose"] if study.debug.verbose else [])]
    if client.is_local:
        return LocalConnector(
            client.name,
            log_path=log_path,
            output_dir=str(output_dir),
            agent_args=agent_args,
            forkserver=forkserver,
        )
    from fedflow.connectors.ssh import SSHConnector

    # the site's run folder follows the run (its directory), so retries and resume find its state
    identity = str(Path(output_dir).resolve())
    return SSHConnector(client, study, log_path=log_path, run_identity=identity, progress=progress)
