"""Turn the study skeleton ``fedflow split`` wrote into a runnable study: set the app and its
[params], keep the split's name, seed and [[clients]].

    python make_study.py SPLIT_DIR/study.toml --app APP --params '{"target": "y"}' [--name NAME]

The file is rewritten in place. ``--params`` is a JSON object of strings, numbers, booleans and
lists of them (what an app's [params] hold).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any, where: str) -> str:
    """Return ``value`` as a TOML value (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SystemExit(f"make_study.py: {where}: {value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    raise SystemExit(f"make_study.py: {where}: cannot write a {type(value).__name__} to TOML")


def toml_key(key: str) -> str:
    """Return ``key`` bare when TOML allows it, else quoted."""
    return key if BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the study.toml written by fedflow split")
    parser.add_argument("--app", required=True)
    parser.add_argument("--params", default="{}", help="the app's [params] as a JSON object")
    parser.add_argument("--name", help="the study's name (default: the split's)")
    args = parser.parse_args()

    skeleton = tomllib.loads(args.study.read_text(encoding="utf-8"))
    params = json.loads(args.params)
    if not isinstance(params, dict):
        raise SystemExit(f"make_study.py: --params must be a JSON object, got {args.params!r}")
    clients = skeleton.get("clients") or []
    if not clients:
        raise SystemExit(f"make_study.py: {args.study} lists no [[clients]]")

    lines = [
        f"# Written by examples/workflow from the split in {args.study.parent.name}/.",
        f"name = {toml_value(args.name or skeleton['name'], 'name')}",
        f"app = {toml_value(args.app, 'app')}",
    ]
    if "seed" in skeleton:
        lines.append(f"seed = {toml_value(skeleton['seed'], 'seed')}")
    lines += ["", "[params]"]
    lines += [f"{toml_key(k)} = {toml_value(v, f'params.{k}')}" for k, v in params.items()]
    for client in clients:
        lines += ["", "[[clients]]"]
        lines += [f"{toml_key(k)} = {toml_value(v, f'clients.{k}')}" for k, v in client.items()]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # what we write must read back
    args.study.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
