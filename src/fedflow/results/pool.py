"""The pooled reference: all sites' data in one table, analysed by the app's trusted twin.

Pooled data is read with pandas — a loader independent of the sites' own — so ``--compare`` checks
the whole path (reading, types, missing values, maths), not only the maths.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedflow.errors import DataError, StudyError
from fedflow.results.compare import Comparison, Tolerance, compare_results

if TYPE_CHECKING:
    import pandas as pd

    from fedflow.apps.base import App

__all__ = ["app_tolerances", "compare_with_pooled", "pooled_frame", "reference_versions"]

_REFERENCE_PACKAGES = ("numpy", "scipy", "pandas", "statsmodels", "scikit-learn", "lifelines")


def reference_versions() -> dict[str, str]:
    """Return the installed versions of the libraries centralized twins use."""
    versions = {}
    for name in _REFERENCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


_MODULES = {"scikit-learn": "sklearn"}


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_reference_libraries(
    app: App[Any], *, importable: Callable[[str], bool] | None = None
) -> list[str]:
    """Return the libraries ``--compare`` needs for ``app`` that cannot be imported: pandas (the
    pooled reader) and every reference package its ``reference`` names (e.g. "statsmodels Logit").
    ``importable(module)`` decides (default: the module can be found, without importing it)."""
    check = importable or _findable
    words = app.reference.replace("(", " ").replace(")", " ").replace(":", " ").split()
    libraries = ["pandas", *(w for w in _REFERENCE_PACKAGES if w in words)]
    if words and words[0] not in libraries:  # a plug-in app's own reference library
        libraries.append(words[0])
    return [lib for lib in libraries if not check(_MODULES.get(lib, lib.replace("-", "_")))]


def _read(
    path: Path, sep: str | None = None, header: bool = True, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(
        path,
        sep=sep or ("\t" if suffix in (".tsv", ".tab") else ","),
        header=0 if header else None,
        names=None if header else list(columns or ()),
        skipinitialspace=True,
    )


def pooled_frame(
    data: Mapping[str, Sequence[str]],
    columns: Sequence[str],
    *,
    dropna: bool,
    reading: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Return every site's files concatenated (``columns`` only, rows with missing values dropped
    when ``dropna``); ``reading`` gives per site how to read its files (``sep``, ``header``,
    ``columns``, as ``Client.reading()`` returns them). Raises StudyError when pandas is missing,
    DataError for unreadable files."""
    try:
        import pandas as pd
    except ImportError:
        raise StudyError(
            "--compare needs the reference libraries: pip install 'fedflow-studies[compare]'"
        ) from None
    frames = []
    for site, files in data.items():
        for name in files:
            try:
                frames.append(_read(Path(name), **dict((reading or {}).get(site, {}))))
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"cannot read {name} for the pooled reference: {exc}", site=site
                ) from None
    pooled = pd.concat(frames, ignore_index=True)
    if columns:
        pooled = pooled[list(columns)]
    return pooled.dropna() if dropna else pooled


def _describe(reference: str, versions: dict[str, str]) -> str:
    """Return e.g. ``statsmodels 0.15.0 OLS`` for an app's reference and installed versions."""
    if not reference:
        return "the centralized reference"
    library, _, routine = reference.partition(" ")
    version = versions.get(library)
    return " ".join(x for x in (library, version, routine) if x)


def app_tolerances(app: App[Any]) -> dict[str, Tolerance]:
    """Return the app's tolerance rules: its default and its per-key ``tolerances``."""
    rules = {"": Tolerance(app.tolerance, app.absolute_tolerance)}
    rules.update({key: Tolerance(*rule) for key, rule in app.tolerances.items()})
    return rules


def compare_with_pooled(
    app: App[Any],
    params: Any,
    result: Mapping[str, Any],
    data: Mapping[str, Sequence[str]],
    *,
    dropna: bool,
    reading: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
) -> tuple[Comparison, dict[str, Any]]:
    """Return the comparison of ``result`` with the app's centralized twin on the pooled data
    (files read as ``reading`` says per site, see ``pooled_frame``; the study's ``seed`` given to
    twins that use one), and the twin's own result."""
    pooled = pooled_frame(data, list(app.columns(params)), dropna=dropna, reading=reading)
    try:
        central = app.centralized_seeded(pooled, params, seed)
    except ImportError as exc:
        raise StudyError(
            f"--compare for '{app.name}' needs {exc.name}: pip install 'fedflow-studies[compare]'"
        ) from None
    versions = reference_versions()
    try:
        federated = app.comparable(result)
    except KeyError:  # the federated result lacks a key its twin has: every value is missing
        federated = {}
    comparison = compare_results(
        federated,
        app.comparable(central),
        tolerances=app_tolerances(app),
        reference=_describe(app.reference_for(params), versions),
        libraries=versions,
    )
    return comparison, central
