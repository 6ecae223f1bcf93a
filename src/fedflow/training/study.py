"""A training study before it runs: its plan as an absolute path with its sha256 in the
parameters (so the manifest, the resolved study.toml and every site see the same file), and torch
present at the coordinator."""

from __future__ import annotations

from typing import Any

from fedflow.errors import StudyError
from fedflow.training import require_torch
from fedflow.training.plan import plan_hash, read_plan

__all__ = ["prepare_training"]


def prepare_training(study: Any) -> Any:
    """Return ``study`` (app "train") with ``params.plan`` absolute (relative paths are the
    study's) and ``params.plan_sha256`` set; raise what to install when torch is missing."""
    require_torch()
    params = dict(study.params)
    plan = params.get("plan")
    if not isinstance(plan, str):
        raise StudyError(f"{study.source or 'study'}: app 'train' needs params.plan = \"plan.py\"")
    path = study.resolve(plan)
    params["plan"] = str(path)
    digest = plan_hash(read_plan(path))
    if params.get("plan_sha256") not in (None, "", digest):
        raise StudyError(
            f"{study.source or 'study'}: plan {path} has hash {digest}, "
            f"not {params['plan_sha256']} as params.plan_sha256 says"
        )
    params["plan_sha256"] = digest
    return study.model_copy(update={"params": params})
