"""Studies of the original fedflow (``fedflow-featurecloud``): ``tool = "<FeatureCloud app>"``
with each client's data list holding the app's input and its ``config.yml``.

On the native platform such a study runs fedflow's **native twin** of the FeatureCloud app: this
module reads the app's own ``config.yml`` / ``config.yaml`` from each client's data list (it is
the app's configuration, not data), passes its keys to the twin as ``[params]``, keeps in the data
list only the file the app reads (its ``input_name``) and tells the site to read it as the app
does (headerless, comma-separated). The original's ``[debug]`` keys are mapped or explained.
Everything it did is returned as one-line notices; every problem is a one-line StudyError saying
what to add or change. ``docs/original-fedflow.md`` states each assumption.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedflow.errors import StudyError

__all__ = ["CONFIG_NAMES", "SVD_CONFIG", "TWINS", "UNTWINNED", "translate_original"]

CONFIG_NAMES = ("config.yml", "config.yaml")
"""The file names FeatureCloud apps read their configuration from."""

SVD_CONFIG = re.compile(r"^config.*\.(yaml||yml)$")
"""federated-svd's own pattern for its config file (``apps/svd/config.py``), verbatim: any
name starting with ``config`` and ending in ``.yaml``, ``.yml`` or ``.``."""

TWINS: dict[str, str] = {
    "mean-app": "fedflow.apps.fc_mean:FeatureCloudMean",
    "federated-svd": "fedflow.apps.fc_svd:FeatureCloudSVD",
    "random-forest": "fedflow.apps.fc_forest:FeatureCloudForest",
    "ada-boost": "fedflow.apps.adaboost:FeatureCloudAdaBoost",  # twin_adaboost.TWIN_APP
}
"""FeatureCloud app (``tool``) → fedflow's native twin (the ``app`` reference it runs)."""

UNTWINNED: dict[str, str] = {}
"""FeatureCloud apps used by the original's workflow that have no twin yet → what to write."""

_MISSING: Any = object()

_DEBUG_WITHOUT_EFFECT = {
    "nodeps": "pip's --no-deps when installing fedflow on each VM",
    "reinstall": "pip's --force-reinstall when installing fedflow on each VM",
    "vmonly": "launching the Vagrant VMs and exiting",
}


def translate_original(
    raw: Mapping[str, Any], folder: Path, label: str
) -> tuple[dict[str, Any], list[str]]:
    """Return the study dict ``raw`` with the original fedflow's keys mapped to fedflow's, and the
    notices saying what was done (one line each).

    ``folder`` is where relative paths resolve (the study file's folder); ``label`` names the
    study in errors. A study that sets ``app`` or ``platform = "featurecloud"`` keeps its ``tool``
    as it is. Raises StudyError for a ``tool`` without a twin and for a twin's missing or
    malformed configuration, naming the client and what to add.
    """
    data = dict(raw)
    notices: list[str] = []
    debug = data.get("debug")
    if isinstance(debug, Mapping):
        for key, meaning in _DEBUG_WITHOUT_EFFECT.items():
            if key in debug:
                notices.append(
                    f"[debug] {key} has no effect here (in the original: {meaning}; "
                    "fedflow starts local sites as processes and installs remote ones from wheels)"
                )
        timeout = debug.get("timeout")
        if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0:
            if "timeout" not in data:
                data["timeout"] = float(timeout)
                notices.append(
                    f"[debug] timeout = {timeout}: the most a FeatureCloud run may take before "
                    "fedflow stops waiting; on the native platform it bounds each round "
                    "(top-level timeout)"
                )
            else:
                notices.append("[debug] timeout is ignored: the study's top-level timeout applies")
    tool = data.get("tool")
    if data.get("app") or data.get("platform", "native") != "native":
        return data, notices
    if not tool:
        tool = _tool_from_config(data, folder)
        if tool is None:
            return data, notices
        notices.append(
            f"no app or tool given: the data lists' config file holds {_SECTIONS_TOOL[tool]}:, "
            f"the section of FeatureCloud's {tool} app, so its twin runs (the original's "
            "workflow studies name the app through their FeatureCloud project)"
        )
    if not isinstance(tool, str):
        return data, notices  # the schema reports the type
    twin = TWINS.get(tool)
    if twin is None:
        if tool in UNTWINNED:
            raise StudyError(
                f"{label}: tool = '{tool}' has no native twin yet: write {UNTWINNED[tool]}, "
                'or set platform = "featurecloud" to run it on FeatureCloud.ai'
            )
        raise StudyError(
            f"{label}: tool = '{tool}' has no native twin (twins: {', '.join(sorted(TWINS))}): "
            'set app = "<name>" (see `fedflow apps`) with its [params], '
            'or platform = "featurecloud" to run it on FeatureCloud.ai'
        )
    translate = _TRANSLATORS[tool]
    return translate(data, folder, label, notices)


_SECTIONS_TOOL = {
    "mean-app": "fc_mean",
    "random-forest": "fc_random_forest",
    "federated-svd": "fc_pca",
    "ada-boost": "fc_boosting",  # twin_adaboost.SECTION
}
"""FeatureCloud app → the top-level section of its config file."""


def _tool_from_config(data: Mapping[str, Any], folder: Path) -> str | None:
    """Return the FeatureCloud app whose section the first client's config file holds (a study
    without ``tool`` whose app is set in its FeatureCloud project), or None."""
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients or not isinstance(clients[0], Mapping):
        return None
    files = clients[0].get("data", [])
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list):
        return None
    for f in files:
        if not isinstance(f, str) or SVD_CONFIG.match(Path(f).name) is None:
            continue
        try:
            doc = yaml.safe_load(_resolve_data(f, folder).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # the twin's translator reports the file when it reads it
        if isinstance(doc, Mapping):
            for tool, section in _SECTIONS_TOOL.items():
                if section in doc:
                    return tool
    return None


# -- mean-app ---------------------------------------------------------------------------------
def _mean_app(
    data: dict[str, Any], folder: Path, label: str, notices: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """FeatureCloud's mean app (fc-mean-template): ``config.yml`` holds
    ``fc_mean: {input_name, output_name}``; it reads ``input_name`` with
    ``pandas.read_csv(header=None)`` and writes the global mean to ``output_name``."""
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients:
        return data, notices  # the schema reports it
    sections: dict[str, Any] = {}
    new_clients = []
    min_count = data.get("min_count", 5)
    for i, client in enumerate(clients):
        if not isinstance(client, Mapping):
            return data, notices
        client = dict(client)
        who = f"client '{client.get('name') or f'site-{i + 1}'}'"
        files = client.get("data", [])
        files = [files] if isinstance(files, str) else list(files)
        configs = [f for f in files if isinstance(f, str) and Path(f).name in CONFIG_NAMES]
        if not configs:
            raise StudyError(
                f"{label}: {who}: tool = 'mean-app' reads its configuration from the data list: "
                'add "config.yml" (holding fc_mean: {input_name: "data.csv", '
                'output_name: "output.csv"}) to data = [...]'
            )
        config_path = _resolve(configs[0], folder)
        text, section = _read_section(config_path, "fc_mean", label, who)
        for key in ("input_name", "output_name"):
            if not isinstance(section.get(key), str) or not section[key]:
                raise StudyError(
                    f"{label}: {who}: {config_path.name} needs fc_mean.{key} "
                    '(e.g. input_name: "data.csv", output_name: "output.csv")'
                )
        input_name, output_name = section["input_name"], section["output_name"]
        inputs = [f for f in files if isinstance(f, str) and Path(f).name == input_name]
        if not inputs:
            held = ", ".join(Path(f).name for f in files if f not in configs) or "nothing else"
            raise StudyError(
                f"{label}: {who}: mean-app reads '{input_name}' (fc_mean.input_name in "
                f"{config_path.name}) but the data list holds {held}: add that file or change "
                "input_name"
            )
        ignored = [f for f in files if f not in configs and f not in inputs]
        notice = (
            f"{who}: {config_path.name} is mean-app's configuration, not data: "
            f"it reads {input_name} (headerless, comma-separated) and writes {output_name}"
        )
        if ignored:
            notice += f"; {', '.join(Path(f).name for f in ignored)} unused, as in the app"
        notices.append(notice)
        sections[who] = (input_name, output_name, text)
        width = _fields(_resolve(inputs[0], folder), label, who)
        client["data"] = [inputs[0]]
        client["header"] = False
        client["columns"] = [str(j) for j in range(width)]
        client.setdefault("sep", ",")
        new_clients.append(client)
    outputs = {v[1] for v in sections.values()}
    if len(outputs) > 1:
        raise StudyError(
            f"{label}: the clients' config.yml name different fc_mean.output_name values "
            f"({', '.join(sorted(outputs))}): give them all the same"
        )
    first = next(iter(sections.values()))
    data["clients"] = new_clients
    data["app"] = TWINS["mean-app"]
    params = dict(data.get("params") or {})
    params.setdefault("output_name", first[1])
    params.setdefault("config_yml", first[2])
    if isinstance(min_count, int):
        params.setdefault("min_values", min_count)
    data["params"] = params
    # The app's records are the values in each file (one headerless line of numbers in the
    # app's example), not its lines: the twin checks min_count against the values it sums.
    data["min_count"] = 1
    notices.append(
        f"tool = 'mean-app' runs fedflow's native twin ({TWINS['mean-app']}); min_count "
        f"({params['min_values']}) applies to the values each site sums, not to its lines"
    )
    return data, notices


# -- shared by the twins of the original's workflow apps ---------------------------------------
class _Config:
    """One client's app configuration: where it is, its section, and one-line errors."""

    def __init__(
        self, path: Path, text: str, section: Mapping[str, Any], name: str, label: str, who: str
    ) -> None:
        self.path, self.text, self.section, self.name = path, text, section, name
        self.label, self.who = label, who

    def error(self, key: str, what: str) -> StudyError:
        return StudyError(f"{self.label}: {self.who}: {self.path.name}: {self.name}.{key} {what}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """Return the value at the dotted ``key``; raise when absent and no ``default``."""
        node: Any = self.section
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping):
                raise self.error(".".join(parts[:depth]), "must be a mapping of keys")
            if part not in node:
                if default is _MISSING:
                    raise self.error(key, "is missing: add it")
                return default
            node = node[part]
        return node

    def text_key(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            raise self.error(key, f"must be a non-empty text, not {value!r}")
        return str(value)

    def int_key(self, key: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        value = self.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be a whole number ≥ {minimum}, not {value!r}")
        return value

    def bool_key(self, key: str, default: Any = _MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value


def _client_config(
    client: Mapping[str, Any],
    i: int,
    folder: Path,
    label: str,
    tool: str,
    matches: Callable[[str], bool],
    section: str,
    example: str,
) -> tuple[str, list[str], _Config]:
    """Return the client's site name, its data list without the config file, and its config."""
    site = str(client.get("name") or f"site-{i + 1}")
    who = f"client '{site}'"
    files = client.get("data", [])
    files = [files] if isinstance(files, str) else list(files)
    configs = [f for f in files if isinstance(f, str) and matches(Path(f).name)]
    if not configs:
        raise StudyError(
            f"{label}: {who}: tool = '{tool}' reads its configuration from the data list: "
            f'add "{example}" (holding its {section}: section) to data = [...]'
        )
    path = _resolve_data(configs[0], folder)
    text, found = _read_section(path, section, label, who, reads=f"its {section} keys")
    rest = [f for f in files if f not in configs]
    return site, rest, _Config(path, text, found, section, label, who)


def _pick(files: list[str], name: str, config: _Config, key: str) -> str:
    """Return the data-list entry the app reads as ``name`` (its config ``key``)."""
    found = [f for f in files if isinstance(f, str) and Path(f).name == name]
    if not found:
        held = ", ".join(Path(f).name for f in files) or "nothing but the config"
        raise StudyError(
            f"{config.label}: {config.who}: the app reads '{name}' ({config.name}.{key} in "
            f"{config.path.name}) but the data list holds {held}: add that file or change {key}"
        )
    return found[0]


def _same(values: dict[str, Any], key: str, label: str, config_name: str) -> Any:
    """Return the one value every client's config gives ``key``; raise naming two that differ."""
    distinct = {repr(v): (site, v) for site, v in values.items()}
    if len(distinct) > 1:
        (a, va), (b, vb) = list(distinct.values())[:2]
        raise StudyError(
            f"{label}: the clients' {config_name} differ in {key} ({a}: {va!r}, {b}: {vb!r}): "
            "the twin runs one analysis, give them all the same"
        )
    return next(iter(values.values()))


def _resolve_data(path: str, folder: Path) -> Path:
    """Resolve a data-list path against the study's folder; the original resolved against the
    current folder, so a path found only there is taken from there."""
    resolved = _resolve(path, folder)
    if not resolved.exists() and not Path(path).expanduser().is_absolute():
        here = Path.cwd() / path
        if here.exists():
            return here
    return resolved


def _relocate(
    files: list[str], folder: Path, notices: list[str], who: str, moved: list[bool]
) -> list[str]:
    """Return the data-list entries as paths the study loader finds, with a note for each that
    only the current folder holds (the original's workflow runs from its root folder)."""
    out = []
    for f in files:
        resolved = _resolve_data(f, folder)
        if resolved != _resolve(f, folder):
            notices.append(
                f"{who}: {f} is not under the study's folder; read from the current folder, "
                "as the original fedflow did"
            )
            out.append(str(resolved))
            moved.append(True)
        else:
            out.append(f)
    return out


def _outdir_from_cwd(data: dict[str, Any], moved: list[bool], notices: list[str]) -> None:
    """A study whose data paths are relative to the current folder (the original's workflow)
    gets its relative ``outdir`` there too, as the original wrote it."""
    outdir = data.get("outdir")
    if moved and isinstance(outdir, str) and outdir and not Path(outdir).expanduser().is_absolute():
        data["outdir"] = str(Path.cwd() / outdir)
        notices.append(
            f"outdir = {outdir!r} is taken from the current folder, like the study's data paths"
        )


def _records(path: Path, sep: str, label: str, who: str) -> int:
    """Return the number of data lines of a delimited file with a header (blank lines skipped,
    as pandas reads it)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = [r for r in csv.reader(handle, delimiter=sep) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise StudyError(f"{label}: {who}: cannot read {path}: {exc.strerror or exc}") from None
    return max(len(rows) - 1, 0)


# -- random-forest ------------------------------------------------------------------------------
def _random_forest(
    data: dict[str, Any], folder: Path, label: str, notices: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """FeatureCloud's random-forest app (``FeatureCloud/fc-random-forest``, ``app/logic.py``):
    ``config.yml`` (the name is hard-coded), section ``fc_random_forest``."""
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients:
        return data, notices
    new_clients = []
    keys: dict[str, dict[str, Any]] = {}
    test_rows: dict[str, int] = {}
    text = ""
    moved: list[bool] = []
    for i, client in enumerate(clients):
        if not isinstance(client, Mapping):
            return data, notices
        client = dict(client)
        names = client.get("data", [])
        names = [names] if isinstance(names, str) else list(names)
        if not any(isinstance(f, str) and Path(f).name == "config.yml" for f in names):
            yaml_named = [f for f in names if isinstance(f, str) and Path(f).name in CONFIG_NAMES]
            if yaml_named:
                who = f"client '{client.get('name') or f'site-{i + 1}'}'"
                raise StudyError(
                    f"{label}: {who}: random-forest reads config.yml (the name is hard-coded in "
                    f"the app), not {Path(yaml_named[0]).name}: rename it"
                )
        site, files, config = _client_config(
            client,
            i,
            folder,
            label,
            "random-forest",
            lambda n: n == "config.yml",
            "fc_random_forest",
            "config.yml",
        )
        mode = config.text_key("mode", "classification")
        if mode not in ("classification", "regression"):
            raise config.error("mode", f"must be classification or regression, not {mode!r}")
        split_mode = config.text_key("split.mode")
        if split_mode != "file":
            raise config.error(
                "split.mode",
                f"is {split_mode!r}: the twin reads one train/test file pair (mode: file); "
                "cross-validation folders (mode: directory) are not supported",
            )
        split_dir = config.get("split.dir", ".")
        if split_dir not in (".", "./", "", None):
            raise config.error(
                "split.dir",
                f"is {split_dir!r}: with mode: file the twin reads the data list's "
                "files themselves; set dir: .",
            )
        if config.get("split.test", None) is not None:
            raise config.error(
                "split.test",
                "is set: the app then splits its rows at random without a seed, "
                "which no run can reproduce; split the data beforehand (fedflow split) and "
                "remove split.test",
            )
        sep = config.text_key("format.sep")
        if len(sep) != 1:
            raise config.error("format.sep", f"must be one character, not {sep!r}")
        train = config.text_key("input.train")
        test = config.text_key("input.test", None)
        if test is None:
            raise config.error(
                "input.test",
                "is missing: the app predicts the test file (the same name as "
                "input.train tests on the training rows)",
            )
        values = {
            "label": config.text_key("format.label"),
            "mode": mode,
            "estimators": config.int_key("estimators", 100),
            "random_state": config.int_key("random_state", None, minimum=0),
            "sep": sep,
            "pred": config.text_key("output.pred"),
            "test": config.text_key("output.test"),
        }
        if mode == "classification":
            values["proba"] = config.text_key("output.proba")
        keys[site] = values
        train_file = _pick(files, train, config, "input.train")
        chosen = [train_file]
        if test != train:
            test_file = _pick(files, test, config, "input.test")
            chosen.append(test_file)
            test_rows[site] = _records(_resolve_data(test_file, folder), sep, label, config.who)
        unused = [Path(f).name for f in files if f not in chosen]
        notices.append(
            f"{config.who}: config.yml is random-forest's configuration, not data: it trains on "
            f"{train} and predicts {test} ({sep!r}-separated, label {values['label']!r})"
            + (f"; {', '.join(unused)} unused, as in the app" if unused else "")
        )
        text = text or config.text
        client["data"] = _relocate(chosen, folder, notices, config.who, moved)
        client["sep"] = sep
        client["header"] = True
        client.pop("columns", None)
        new_clients.append(client)
    params = dict(data.get("params") or {})
    for key in next(iter(keys.values())):
        params.setdefault(
            key, _same({s: v.get(key) for s, v in keys.items()}, key, label, "config.yml")
        )
    params.setdefault("test_rows", test_rows)
    params.setdefault("config_yml", text)
    min_count = data.get("min_count", 5)
    if isinstance(min_count, int) and not isinstance(min_count, bool):
        params.setdefault("min_samples_leaf", min_count)
    _outdir_from_cwd(data, moved, notices)
    data["clients"] = new_clients
    data["app"] = TWINS["random-forest"]
    data["params"] = params
    notices.append(
        f"tool = 'random-forest' runs fedflow's native twin ({TWINS['random-forest']}): the app's "
        "scikit-learn trees, each site's share int(estimators · rows / all rows); "
        + (
            f"every leaf holds at least min_count = {min_count} rows of a site (the app's trees "
            "go down to single rows: set min_count = 1 for exactly the app's trees and files)"
            if min_count != 1
            else "min_count = 1: exactly the app's trees and files"
        )
    )
    return data, notices


# -- federated-svd ------------------------------------------------------------------------------
_SVD_OUTPUT_DEFAULTS = {
    "left_eigenvectors": "left_eigenvectors.tsv",
    "right_eigenvectors": "right_eigenvectors.tsv",
    "projections": "projections.tsv",
    "scaled_data_file": "scaled_data.tsv",
}


def _federated_svd(
    data: dict[str, Any], folder: Path, label: str, notices: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """FeatureCloud's federated SVD app (``AnneHartebrodt/fc-federated-svd``, ``apps/svd/
    config.py``): a ``config*.yaml`` / ``config*.yml``, section ``fc_pca``."""
    clients = data.get("clients")
    if not isinstance(clients, list) or not clients:
        return data, notices
    if data.get("dropna") is True:
        notices.append(
            "federated-svd with dropna = true: a feature (row) with a missing value at a site "
            "is dropped there, so at every site: the app with scaling.max_nan_fraction: 0"
        )
    new_clients = []
    keys: dict[str, dict[str, Any]] = {}
    coordinator = ""
    config_name = text = ""
    moved: list[bool] = []
    for i, client in enumerate(clients):
        if not isinstance(client, Mapping):
            return data, notices
        client = dict(client)
        site, files, config = _client_config(
            client,
            i,
            folder,
            label,
            "federated-svd",
            lambda n: SVD_CONFIG.match(n) is not None,
            "fc_pca",
            "config.yaml",
        )
        if client.get("coordinator") is True and not coordinator:
            coordinator = site
        values = _svd_keys(config)
        input_name = config.text_key("input.data")
        config.get("input.dir")  # required by the app (KeyError there)
        delimiter = config.text_key("input.delimiter")
        if len(delimiter) != 1:
            raise config.error("input.delimiter", f"must be one character, not {delimiter!r}")
        keys[site] = values
        chosen = _pick(files, input_name, config, "input.data")
        unused = [Path(f).name for f in files if f != chosen]
        notices.append(
            f"{config.who}: {config.path.name} is federated-svd's configuration, not data: it "
            f"reads {input_name} ({delimiter!r}-separated, a row per feature named in the first "
            "column, a column per sample)"
            + (f"; {', '.join(unused)} unused, as in the app" if unused else "")
        )
        config_name = config_name or config.path.name
        text = text or config.text
        client["data"] = _relocate([chosen], folder, notices, config.who, moved)
        client["sep"] = delimiter
        client["header"] = True
        client.pop("columns", None)
        new_clients.append(client)
    params = dict(data.get("params") or {})
    for key in next(iter(keys.values())):
        params.setdefault(key, _same({s: v[key] for s, v in keys.items()}, key, label, "configs"))
    params.setdefault("coordinator", coordinator)
    params.setdefault("config_name", config_name)
    params.setdefault("config_text", text)
    min_count = data.get("min_count", 5)
    if isinstance(min_count, int) and not isinstance(min_count, bool):
        params.setdefault("min_samples", min_count)
    _outdir_from_cwd(data, moved, notices)
    data["clients"] = new_clients
    data["app"] = TWINS["federated-svd"]
    data["params"] = params
    data["min_count"] = 1  # the app's records are its columns (samples): the twin checks them
    folder_note = (
        f"; its output.dir ({params['output_dir']}) is not reproduced: the files land in "
        "sites/<site>/ itself"
        if params.get("output_dir")
        else ""
    )
    notices.append(
        f"tool = 'federated-svd' runs fedflow's native twin ({TWINS['federated-svd']}): the "
        "app's scaling and its top components, computed exactly (signs fixed: each "
        "component's largest loading positive); min_count applies to each site's samples "
        f"(columns){folder_note}"
    )
    if params.get("highly_variable"):
        notices.append(
            "federated-svd: scaling.highly_variable keeps the floor(features · perc_highly_var) "
            "features of LOWEST standard deviation, as the app's np.argsort(std)[0:hv] does"
        )
    return data, notices


def _svd_keys(config: _Config) -> dict[str, Any]:
    """Return the twin's parameters from an ``fc_pca`` section, read as ``apps/svd/config.py``
    reads it (including its defaults and quirks, each stated in docs/original-fedflow.md)."""
    values: dict[str, Any] = {"output_dir": config.get("output.dir", "") or ""}
    if not isinstance(values["output_dir"], str):
        raise config.error("output.dir", "must be a folder name")
    # The app reads eigenvalues and explained_variance in one try: without explained_variance
    # it falls back to eigenvalues.tsv for the eigenvalues too.
    explained = config.get("output.explained_variance", None)
    if explained is None:
        values["eigenvalues"] = "eigenvalues.tsv"
        values["explained_variance"] = "explained_variance.tsv"
    else:
        values["eigenvalues"] = config.text_key("output.eigenvalues")
        values["explained_variance"] = config.text_key("output.explained_variance")
    values["delimiter"] = config.text_key("output.delimiter", "\t")
    for key, default in _SVD_OUTPUT_DEFAULTS.items():
        values[key] = config.text_key(f"output.{key}", default)
    values["pcs"] = config.int_key("algorithm.pcs", 10)
    # The app sets the scaling keys one by one in one try: the first missing key leaves it and
    # every later one at the app's default.
    scaling: list[tuple[str, Any]] = [
        ("center", True),
        ("variance", True),
        ("highly_variable", True),
        ("perc_highly_var", 0.1),
        ("log_transform", True),
        ("max_nan_fraction", 0.5),
    ]
    missing = False
    for key, default in scaling:
        value: Any = default if missing else config.get(f"scaling.{key}", None)
        if value is None:
            missing = True
            value = default
        elif key in ("perc_highly_var", "max_nan_fraction"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise config.error(f"scaling.{key}", f"must be a number, not {value!r}")
            value = float(value)
        elif not isinstance(value, bool):
            raise config.error(f"scaling.{key}", f"must be true or false, not {value!r}")
        values[key] = value
    if config.bool_key("privacy.send_projections"):
        raise config.error(
            "privacy.send_projections",
            "is true: the app then sends every site's projections (or random draws like them) "
            "to all sites; the twin keeps them at their site: set it to false",
        )
    config.bool_key("privacy.subsample_projections")  # required by the app (KeyError there)
    return values


# -- ada-boost ----------------------------------------------------------------------------------
def _ada_boost(
    data: dict[str, Any], folder: Path, label: str, notices: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """FeatureCloud's ada-boost app (``FeatureCloud/fc-boosting``): ``fedflow.study.twin_adaboost``
    translates its ``config.yml`` (imported here, when a study names it)."""
    from fedflow.study.twin_adaboost import translate

    return translate(data, folder, label, notices)


_TRANSLATORS: dict[
    str, Callable[[dict[str, Any], Path, str, list[str]], tuple[dict[str, Any], list[str]]]
] = {
    "mean-app": _mean_app,
    "random-forest": _random_forest,
    "federated-svd": _federated_svd,
    "ada-boost": _ada_boost,
}


def _resolve(path: str, folder: Path) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else folder / expanded


def _read_section(
    path: Path, section: str, label: str, who: str, reads: str = ""
) -> tuple[str, Mapping[str, Any]]:
    """Return the YAML file's text and its ``section`` mapping (``yaml.safe_load`` only)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"{label}: {who}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyError(f"{label}: {who}: {path.name} is not valid YAML: {exc}") from None
    found = doc.get(section) if isinstance(doc, Mapping) else None
    if not isinstance(found, Mapping):
        raise StudyError(
            f"{label}: {who}: {path.name} has no '{section}:' section "
            f"(the app reads {reads or f'{section}.input_name and {section}.output_name'})"
        )
    return text, found


def _fields(path: Path, label: str, who: str) -> int:
    """Return the number of comma-separated fields on the first line of ``path``."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            first = next(csv.reader(handle), None)
    except OSError as exc:
        raise StudyError(f"{label}: {who}: cannot read {path}: {exc.strerror or exc}") from None
    if not first:
        raise StudyError(f"{label}: {who}: {path} is empty (mean-app sums its values)")
    return len(first)
