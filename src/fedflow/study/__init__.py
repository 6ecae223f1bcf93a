"""The study file: schema, loading, template, credentials."""

from __future__ import annotations

from fedflow.study.load import load_study, study_from_dict
from fedflow.study.schema import Client, Debug, Study

__all__ = ["Client", "Debug", "Study", "load_study", "study_from_dict"]
