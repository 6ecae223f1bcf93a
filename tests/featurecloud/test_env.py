"""The .env credentials loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedflow.errors import StudyError
from fedflow.study.env import EnvPermissionWarning, find_env_file, load_credentials


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_reads_user_password_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path, "# users\nalice=pw=with=equals\n\nexport bob = 'quoted pw'\ncarol=\"x\"\n"
    )
    creds = load_credentials(path)
    assert dict(creds) == {"alice": "pw=with=equals", "bob": "quoted pw", "carol": "x"}
    assert creds.password("alice") == "pw=with=equals"
    assert "pw=with" not in repr(creds) and "quoted" not in repr(creds)


def test_missing_user_names_file_and_user(tmp_path: Path) -> None:
    creds = load_credentials(write(tmp_path, "alice=1\n"))
    with pytest.raises(StudyError, match=r"\.env: no password for FeatureCloud user 'dave'"):
        creds.password("dave")


def test_malformed_line_is_named_by_number_not_content(tmp_path: Path) -> None:
    path = write(tmp_path, "alice=1\nsecret-without-equals\n")
    with pytest.raises(StudyError, match="line 2 is not USER=PASSWORD") as info:
        load_credentials(path)
    assert "secret-without-equals" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="no credentials file"):
        load_credentials(tmp_path / ".env")


def test_warns_when_others_can_read(tmp_path: Path) -> None:
    path = write(tmp_path, "alice=1\n", mode=0o644)
    with pytest.warns(EnvPermissionWarning, match="chmod 600"):
        load_credentials(path)


def test_no_warning_for_owner_only(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    load_credentials(write(tmp_path, "alice=1\n"))
    assert not [w for w in recwarn if issubclass(w.category, EnvPermissionWarning)]


def test_find_env_file_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert find_env_file([first, second]) is None
    write(second, "x=1\n")
    assert find_env_file([first, second]) == second / ".env"
