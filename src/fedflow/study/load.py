"""Read a study file into a ``Study``; every problem becomes one line naming file and key."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from pydantic import BaseModel, ValidationError

from fedflow.apps import available_apps, get_app
from fedflow.errors import AppError, StudyError
from fedflow.study.original import translate_original
from fedflow.study.schema import Client, Debug, Study

__all__ = ["load_study", "study_from_dict"]

_MODELS: dict[str, type[BaseModel]] = {"": Study, "clients": Client, "debug": Debug}


def load_study(path: str | Path, **overrides: Any) -> Study:
    """Read and validate the study file at ``path``; ``overrides`` replace top-level keys.

    Raises StudyError for a missing or malformed file and for invalid keys or values.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyError(f"{source}: no such study file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{source}: cannot read the study file ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{source}: malformed TOML: {exc}") from None
    raw.update(overrides)
    return study_from_dict(raw, source=source.resolve(), text=text)


def study_from_dict(
    raw: Mapping[str, Any], *, source: Path | None = None, text: str | None = None
) -> Study:
    """Validate a study given as a dict (as parsed from TOML); paths resolve against ``source``."""
    label = str(source) if source else "study"
    data = dict(raw)
    if source is not None and not data.get("name"):
        data["name"] = source.stem
    folder = source.parent if source is not None else Path.cwd()
    data, notices = translate_original(data, folder, label)
    try:
        study = Study.model_validate(data)
    except ValidationError as exc:
        raise StudyError(f"{label}: {_explain(exc, data.get('app'))}") from None
    _check_params(study, label)
    study.source = source
    study.source_text = text
    study.notices = notices
    if not study.name:
        study.name = "study"
    if study.sim:
        # The original simulated sites on Vagrant VMs and ignored the connection keys; fedflow
        # simulates them as local processes, so the same keys are ignored the same way.
        for client in study.clients:
            client.hostname = None
    for client in study.clients:
        if client.is_local or not study.skip_data_transfer:
            try:
                client.data = [str(study.resolve(p)) for p in client.data]
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
                raise StudyError(
                    f"{label}: client '{client.name}': cannot resolve its data path: {exc}"
                ) from None
    return study


def _check_params(study: Study, label: str) -> None:
    """Check ``[params]`` against the study's app, so a parameter error names the study file.

    An app that cannot be loaded is left for the run to report (``check_study``). Raises AppError.
    """
    if study.platform != "native" or not study.app:
        return
    try:
        app = get_app(study.app)
    except AppError:
        return
    try:
        app.parse_params(study.params)
    except AppError as exc:
        raise AppError(f"{label}: {exc.message}") from None


def _param_names(app: Any) -> list[str]:
    """Return the parameter names of the app called ``app`` ([] when it cannot be loaded)."""
    if not isinstance(app, str):
        return []
    try:
        return [f.name for f in msgspec.structs.fields(get_app(app).Params)]
    except Exception:  # only a hint: an app that cannot be loaded offers none
        return []


def _params_hint(key: str, app: Any) -> str:
    """Return a hint when a top-level ``key`` is a parameter of the study's app or a built-in app."""
    if key in _param_names(app):
        return f" ('{key}' is a parameter of app '{app}': put it under [params])"
    owners = [name for name in available_apps() if key in _param_names(name)]
    if owners:
        return f" ('{key}' is a parameter of app {', '.join(repr(o) for o in owners)}: put it under [params])"
    return ""


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    names = [p for p in loc if isinstance(p, str)]
    return _MODELS.get(names[-1] if names else "", Study)


def _explain(exc: ValidationError, app: Any = None) -> str:
    """Return the first validation error as one line; suggest the closest key for unknown ones,
    and ``[params]`` for a top-level key that is a parameter of ``app`` or of a built-in app."""
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        fields = [f for f, info in model.model_fields.items() if not info.exclude]
        hint = _params_hint(key, app) if len(loc) == 1 else ""
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        if close and not hint:
            hint = f" (did you mean '{close[0]}'?)"
        return f"unknown key '{_where(loc)}'{hint}"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if not loc:
        return message
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    return f"{_where(loc)}: {message[0].lower()}{message[1:]}{shown}"
