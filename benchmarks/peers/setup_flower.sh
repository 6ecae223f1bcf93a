#!/usr/bin/env bash
# Creates the virtual environment in which benchmarks/peers/flower_*.py run: Flower (flwr, with its
# simulation engine) and the CPU build of torch 2.13.0, apart from fedflow's own environment.
#
#   bash benchmarks/peers/setup_flower.sh            # venv at $FEDFLOW_FLOWER_VENV
#                                                    # (default ~/.cache/fedflow/peers/flower)
#   FEDFLOW_FLOWER_VENV=/some/dir bash benchmarks/peers/setup_flower.sh
#
# The venv lies outside the repository by default; benchmarks/peers/.venv/ is git-ignored for
# those who want it beside the scripts. torch is installed first, pinned to exactly 2.13.0 and
# binary only, so the CPU wheel found through pip's find-links is used; a looser requirement (or
# installing flwr first) lets pip pick a CUDA build of several GB. flwr is then installed under a
# constraint that keeps that torch. The script re-runs safely: it skips what is already there.
set -euo pipefail

venv="${FEDFLOW_FLOWER_VENV:-$HOME/.cache/fedflow/peers/flower}"
python="${PYTHON:-python3}"
flwr_spec="${FLWR_SPEC:-flwr[simulation]==1.42.0}"
export FLWR_TELEMETRY_ENABLED=0

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

constraints="$venv/fedflow-constraints.txt"
printf 'torch==2.13.0\n' >"$constraints"

echo "installing torch==2.13.0 (CPU wheel)"
install() {  # install() LOG ARGS...: pip install, its log kept in the venv, shown on failure
    local log="$venv/$1"
    shift
    if ! "${pip[@]}" install "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "pip install $* failed (log: $log)" >&2
        exit 1
    fi
    grep -E '^(Successfully installed|Requirement already satisfied: (torch|flwr))' "$log" || true
}

install pip-torch.log --only-binary torch "torch==2.13.0"
grep -E '^Processing .*torch-' "$venv/pip-torch.log" || true
if grep -E 'Downloading torch-' "$venv/pip-torch.log" >/dev/null; then
    echo "note: torch was downloaded, not taken from a local wheel" >&2
fi

echo "installing $flwr_spec, scikit-learn"
install pip-flwr.log -c "$constraints" "$flwr_spec" scikit-learn

"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import sys

import torch

names = {d.metadata["Name"].lower() for d in md.distributions()}
cuda = sorted(n for n in names if n.startswith("nvidia-") or n == "triton")
if torch.__version__.split("+")[0] != "2.13.0":
    sys.exit(f"torch {torch.__version__} installed, expected 2.13.0")
if torch.version.cuda is not None or cuda:
    sys.exit(f"a CUDA build crept in: torch.version.cuda={torch.version.cuda}, packages {cuda}")
for name in ("flwr", "ray", "scikit-learn", "numpy"):
    print(f"{name} {md.version(name)}")
print(f"torch {torch.__version__} (CPU only)")
PY
echo "ready: $venv/bin/python"
