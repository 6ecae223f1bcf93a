"""FeatureCloud credentials: ``USER=PASSWORD`` lines in ``.env`` of the working folder.

The format is the original fedflow's. Blank lines and ``#`` comments are skipped, ``export`` in
front of a line and quotes around a value are accepted. Passwords are never printed, logged or
shown in a ``repr``; a parse error names the file and the line number, never the line itself.
A warning is issued when the file can be read by group or others (``chmod 600 .env`` fixes it);
``fedflow run`` shows it as one line (``permission_problem``), not as a Python warning.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from fedflow.errors import StudyError

__all__ = [
    "Credentials",
    "EnvPermissionWarning",
    "find_env_file",
    "load_credentials",
    "permission_problem",
    "require_env_file",
]

ENV_FILE = ".env"


class EnvPermissionWarning(UserWarning):
    """The credentials file can be read by users other than its owner."""


class Credentials(Mapping[str, str]):
    """Passwords by user name, read from one ``.env`` file; the repr never shows a password."""

    def __init__(self, passwords: Mapping[str, str], source: Path | None = None) -> None:
        self._passwords = dict(passwords)
        self.source = source

    def __getitem__(self, user: str) -> str:
        return self._passwords[user]

    def __iter__(self) -> Iterator[str]:
        return iter(self._passwords)

    def __len__(self) -> int:
        return len(self._passwords)

    def __repr__(self) -> str:
        return f"Credentials(users={sorted(self._passwords)}, source={str(self.source)!r})"

    def password(self, user: str) -> str:
        """Return ``user``'s password. Raises StudyError naming the file and the user if absent."""
        try:
            return self._passwords[user]
        except KeyError:
            where = str(self.source) if self.source else ENV_FILE
            raise StudyError(
                f"{where}: no password for FeatureCloud user '{user}' (add a line {user}=PASSWORD)"
            ) from None


def require_env_file(folders: Iterable[Path]) -> Path:
    """Return the first ``.env`` found in ``folders``; raise StudyError naming each folder once."""
    unique = list(dict.fromkeys(Path(f).resolve() for f in folders))
    found = find_env_file(unique)
    if found is None:
        where = " or ".join(str(f) for f in unique)
        raise StudyError(
            f"no {ENV_FILE} with FeatureCloud passwords in {where} "
            "(one USER=PASSWORD line per fc_username; then chmod 600 it)"
        )
    return found


def permission_problem(path: str | Path) -> str | None:
    """Return why the credentials file at ``path`` is too open (group or others may read it),
    as one line with the fix, or None when it is private (or not on a POSIX system)."""
    source = Path(path)
    try:
        mode = source.stat().st_mode
    except OSError:
        return None
    if os.name != "posix" or not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{source} can be read by other users (mode {stat.S_IMODE(mode):o}); "
        f"run: chmod 600 {source}"
    )


def find_env_file(folders: Iterable[Path]) -> Path | None:
    """Return the first ``.env`` found in ``folders`` (in order), or None."""
    for folder in folders:
        candidate = Path(folder) / ENV_FILE
        if candidate.is_file():
            return candidate
    return None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def load_credentials(path: str | Path | None = None, *, warn: bool = True) -> Credentials:
    """Read ``USER=PASSWORD`` lines from ``path`` (default ``./.env``) and return them.

    Raises StudyError when the file is missing, unreadable or has a malformed line (named by its
    number only). Warns with EnvPermissionWarning when group or others may read the file.
    """
    source = Path(path) if path is not None else Path.cwd() / ENV_FILE
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(
            f"{source}: no credentials file; create it with one USER=PASSWORD line per "
            "FeatureCloud user (and chmod 600 it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(
            f"{source}: cannot read the credentials file ({type(exc).__name__})"
        ) from None
    problem = permission_problem(source) if warn else None
    if problem:
        warnings.warn(problem, EnvPermissionWarning, stacklevel=2)
    passwords: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        user, sep, value = line.partition("=")
        user = user.strip()
        if not sep or not user:
            raise StudyError(f"{source}: line {number} is not USER=PASSWORD")
        passwords[user] = _unquote(value.strip())
    return Credentials(passwords, source)
