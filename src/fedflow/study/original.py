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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedflow.errors import StudyError

__all__ = ["CONFIG_NAMES", "TWINS", "UNTWINNED", "translate_original"]

CONFIG_NAMES = ("config.yml", "config.yaml")
"""The file names FeatureCloud apps read their configuration from."""

TWINS: dict[str, str] = {"mean-app": "fedflow.apps.fc_mean:FeatureCloudMean"}
"""FeatureCloud app (``tool``) → fedflow's native twin (the ``app`` reference it runs)."""

UNTWINNED: dict[str, str] = {
    "federated-svd": (
        'app = "pca" with [params] columns = [...] and n_components = <k> '
        "(its config.yaml is not read here; data files need a header)"
    ),
    "random-forest": (
        'app = "random-forest" with [params] target = "<format.label>", '
        "n_estimators = <estimators>, seed = <random_state> (its config.yml is not read here; "
        "data files need a header)"
    ),
    "ada-boost": (
        'app = "random-forest" (fedflow has no AdaBoost; the nearest ensemble classifier) '
        'with [params] target = "<format.label>", n_estimators = <estimators>'
    ),
}
"""FeatureCloud apps used by the original's workflow that have no twin yet → what to write."""

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
    if data.get("app") or data.get("platform", "native") != "native" or not tool:
        return data, notices
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


_TRANSLATORS: dict[
    str, Callable[[dict[str, Any], Path, str, list[str]], tuple[dict[str, Any], list[str]]]
] = {"mean-app": _mean_app}


def _resolve(path: str, folder: Path) -> Path:
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else folder / expanded


def _read_section(path: Path, section: str, label: str, who: str) -> tuple[str, Mapping[str, Any]]:
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
            f"(the app reads {section}.input_name and {section}.output_name)"
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
