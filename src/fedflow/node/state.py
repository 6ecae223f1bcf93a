"""A site's state folder: the files an app keeps between rounds (``SiteContext.store``), written
by the node agent under the site's run folder, atomically (a temporary file in the same folder,
fsynced, then renamed, and the folder fsynced), so an agent killed while writing leaves the
previous file whole. They never leave the site."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fedflow._atomic import atomic_write
from fedflow.apps.base import StateStore
from fedflow.errors import DataError

__all__ = ["FolderStore"]


class FolderStore(StateStore):
    """``SiteContext.store`` backed by ``folder`` (created on the first write, mode 0700)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        safe = Path(name).name
        if safe != name or safe in ("", ".", ".."):
            raise ValueError(f"state file name {name!r} is not a plain file name")
        return self.folder / safe

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"state file {path} is missing", file=str(path)) from None
        except OSError as exc:
            raise DataError(
                f"state file {path} cannot be read: {exc.strerror}", file=str(path)
            ) from None

    def write(self, name: str, content: bytes) -> None:
        path = self._path(name)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, content, sync_folder=True)

    def prune(self, prefix: str, keep: Iterable[str]) -> None:
        if not self.folder.is_dir():
            return
        kept = set(keep)
        for path in self.folder.iterdir():
            if path.name.startswith(prefix) and path.name not in kept and path.is_file():
                path.unlink()
