"""``tool = 'ada-boost'``: the original fedflow's study of FeatureCloud's ada-boost app
(``FeatureCloud/fc-boosting``) mapped to its native twin, ``fedflow.apps.adaboost``.

The app reads ``/mnt/input/config.yml`` (the name is hard-coded), section ``fc_boosting``::

    fc_boosting:
      files: {input: species.csv, output: ada.csv, missing_data: mean}
      parameters: {label_col: health_status, test_size: 0.3, n_estimators: 100,
                   learning_rate: 1, random_state: 42, metric: matth}

Every key is read with ``config[...][...]``, so each is required (the app stops with a KeyError
without one); here a missing or malformed key is a one-line StudyError naming the client, the
file and the key. ``files.input`` is read with a header line, comma-separated for ``.csv`` and
tab-separated for ``.tsv`` (another extension leaves the app without data). ``files.output`` is
read but never written by the app: it writes ``eval_on_local_testset.csv`` (and a pickled model,
which the twin does not write); notices say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import fedflow.study.original as original  # attribute use at call time: original may import us
from fedflow.errors import StudyError

__all__ = ["SECTION", "TWIN_APP", "translate"]

TWIN_APP = "fedflow.apps.adaboost:FeatureCloudAdaBoost"
"""The ``app`` reference of the twin."""

SECTION = "fc_boosting"
"""The app's section of ``config.yml``."""

_EXAMPLE = (
    "fc_boosting: {files: {input: data.csv, output: out.csv, missing_data: mean}, "
    "parameters: {label_col: <label>, test_size: 0.3, n_estimators: 100, learning_rate: 1, "
    "random_state: 42, metric: accuracy}}"
)
_SEPARATORS = {".csv": ",", ".tsv": "\t"}


def translate(
    data: dict[str, Any], folder: Path, label: str, notices: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Return the study dict with each client's ``config.yml`` read into the twin's
    ``[params]``, its data list reduced to the app's input file (read with a header and the
    app's separator), and the notices saying what was done. Same contract as the mean-app
    translator in ``fedflow.study.original``."""
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients:
        return data, notices  # the schema reports it
    values: dict[str, dict[str, Any]] = {}
    new_clients = []
    lead = ""
    for i, client in enumerate(clients):
        if not isinstance(client, Mapping):
            return data, notices
        client = dict(client)
        site = str(client.get("name") or f"site-{i + 1}")
        who = f"client '{site}'"
        files = client.get("data", [])
        files = [files] if isinstance(files, str) else list(files)
        configs = [f for f in files if isinstance(f, str) and Path(f).name == "config.yml"]
        if not configs:
            other = [
                f for f in files if isinstance(f, str) and Path(f).name in original.CONFIG_NAMES
            ]
            if other:
                raise StudyError(
                    f"{label}: {who}: ada-boost reads config.yml (the name is hard-coded in the "
                    f"app), not {Path(other[0]).name}: rename it"
                )
            raise StudyError(
                f"{label}: {who}: tool = 'ada-boost' reads its configuration from the data "
                f'list: add "config.yml" (holding {_EXAMPLE}) to data = [...]'
            )
        path = _find(configs[0], folder, notices, who)
        text = _read_text(path, label, who)
        keys = _Keys(path, _section(path, text, label, who), label, who)
        input_name = keys.text("files.input")
        suffix = Path(input_name).suffix
        if suffix not in _SEPARATORS:
            raise keys.error(
                "files.input",
                f"is {input_name!r}: the app reads only a .csv or .tsv file "
                "(another name leaves it without data)",
            )
        found = [f for f in files if isinstance(f, str) and Path(f).name == input_name]
        if not found:
            held = ", ".join(Path(f).name for f in files if f not in configs) or "nothing else"
            raise StudyError(
                f"{label}: {who}: ada-boost reads '{input_name}' ({SECTION}.files.input in "
                f"{path.name}) but the data list holds {held}: add that file or change "
                "files.input"
            )
        values[site] = {
            "label_col": keys.text("parameters.label_col"),
            "test_size": keys.test_size("parameters.test_size"),
            "n_estimators": keys.whole("parameters.n_estimators", minimum=1),
            "learning_rate": keys.positive("parameters.learning_rate"),
            "random_state": keys.seed("parameters.random_state"),
            "metric": keys.text("parameters.metric"),
            "missing_data": keys.text("files.missing_data"),
            "output": keys.text("files.output"),
        }
        ignored = [Path(f).name for f in files if f not in configs and f not in found]
        sep = _SEPARATORS[suffix]
        notices.append(
            f"{who}: config.yml is ada-boost's configuration, not data: it reads {input_name} "
            f"(with a header, {'comma' if sep == ',' else 'tab'}-separated, label "
            f"{values[site]['label_col']!r}) and writes eval_on_local_testset.csv"
            + (f"; {', '.join(ignored)} unused, as in the app" if ignored else "")
        )
        if client.get("coordinator") is True and not lead:
            lead = site
        client["data"] = [_relocate(found[0], folder, notices, who)]
        client["sep"] = sep
        client["header"] = True
        client.pop("columns", None)
        new_clients.append(client)
    params = dict(data.get("params") or {})
    first = next(iter(values.values()))
    for key in first:
        if key == "output":
            continue
        params.setdefault(key, _same({s: v[key] for s, v in values.items()}, key, label))
    if lead:
        params.setdefault("lead_site", lead)
    output = first["output"]
    notices.append(
        f"ada-boost reads files.output ({output}) but never writes it: it writes "
        "eval_on_local_testset.csv (written to sites/<site>/ here) and a pickled model, "
        "global_boosting_classifier.sav (not written here: fedflow writes no pickles)"
    )
    missing = params.get("missing_data")
    if missing == "drop":
        if data.get("dropna") is False:
            notices.append(
                "files.missing_data = drop, but the study sets dropna = false: sites refuse "
                "rows with missing values instead of dropping them"
            )
        else:
            data["dropna"] = True
            notices.append(
                "files.missing_data = drop: rows with a missing value are dropped at each site "
                "(dropna = true), as the app's dropna() does"
            )
    else:
        notices.append(
            f"files.missing_data = {missing}: the twin does not fill missing values as the "
            "app does; a site whose file has any stops with a one-line error "
            "(drop is reproduced: files.missing_data: drop)"
        )
    data["clients"] = new_clients
    data["app"] = TWIN_APP
    data["params"] = params
    seeded = (
        "its random_state seeds the split and the stumps"
        if params.get("random_state")
        else "random_state is 0 or null: the app leaves AdaBoost unseeded, the twin seeds it "
        "from the study's seed"
    )
    notices.append(
        f"tool = 'ada-boost' runs fedflow's native twin ({TWIN_APP}): each site fits "
        "scikit-learn's AdaBoost stumps as the app's scikit-learn 1.3 does (SAMME.R), "
        f"the lead site's model takes every site's stumps, each site scores it; {seeded}"
    )
    return data, notices


class _Keys:
    """One client's ``fc_boosting`` section, with one-line errors naming the file and key."""

    def __init__(self, path: Path, section: Mapping[str, Any], label: str, who: str) -> None:
        self.path, self.section, self.label, self.who = path, section, label, who

    def error(self, key: str, what: str) -> StudyError:
        return StudyError(f"{self.label}: {self.who}: {self.path.name}: {SECTION}.{key} {what}")

    def get(self, key: str) -> Any:
        group, _, name = key.partition(".")
        node = self.section.get(group)
        if not isinstance(node, Mapping):
            raise self.error(group, f"is missing or not a mapping: add it ({_EXAMPLE})")
        if name not in node:
            raise self.error(key, "is missing: add it (the app stops without it)")
        return node[name]

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty text, not {value!r}")
        return value

    def whole(self, key: str, minimum: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be a whole number ≥ {minimum}, not {value!r}")
        return value

    def positive(self, key: str) -> float:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.error(key, f"must be a positive number, not {value!r}")
        return float(value)

    def test_size(self, key: str) -> float | int:
        value = self.get(key)
        if isinstance(value, float) and 0.0 < value < 1.0:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise self.error(
            key, f"must be a fraction between 0 and 1 or a number of rows, not {value!r}"
        )

    def seed(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise self.error(key, f"must be a whole number 0..2**32-1 or null, not {value!r}")
        return value


def _read_text(path: Path, label: str, who: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"{label}: {who}: cannot read {path}: {exc.strerror or exc}") from None


def _section(path: Path, text: str, label: str, who: str) -> Mapping[str, Any]:
    """The ``fc_boosting`` mapping of the file (``yaml.safe_load`` only)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = str(exc).replace("\n", " ")
        raise StudyError(f"{label}: {who}: {path.name} is not valid YAML: {reason}") from None
    found = doc.get(SECTION) if isinstance(doc, Mapping) else None
    if not isinstance(found, Mapping):
        raise StudyError(
            f"{label}: {who}: {path.name} has no '{SECTION}:' section (the app reads {_EXAMPLE})"
        )
    return found


def _same(values: dict[str, Any], key: str, label: str) -> Any:
    """The one value every client's config.yml gives ``key``; StudyError naming two that
    differ (each client of the app reads its own file; the twin runs one analysis)."""
    distinct = {repr(v): (site, v) for site, v in values.items()}
    if len(distinct) > 1:
        (a, va), (b, vb) = list(distinct.values())[:2]
        raise StudyError(
            f"{label}: the clients' config.yml differ in {SECTION} {key} "
            f"('{a}': {va!r}, '{b}': {vb!r}): give them all the same"
        )
    return next(iter(values.values()))


def _find(path: str, folder: Path, notices: list[str], who: str) -> Path:
    """A data-list path resolved against the study's folder or, when only the current folder
    holds it, against that (the original resolved paths against the current folder: its
    workflow runs from its root with the studies in ``resources/<tool>/``)."""
    resolved = original._resolve(path, folder)
    if not resolved.exists() and not Path(path).expanduser().is_absolute():
        here = Path.cwd() / path
        if here.exists():
            notices.append(
                f"{who}: {path} is not under the study's folder; read from the current "
                "folder, as the original fedflow did"
            )
            return here
    return resolved


def _relocate(path: str, folder: Path, notices: list[str], who: str) -> str:
    """The data-list entry as a path the study loader finds (see ``_find``)."""
    found = _find(path, folder, notices, who)
    return path if found == original._resolve(path, folder) else str(found)
