"""Cohorts from ATLAS/Circe JSON: discovery, SQL generation, instantiation, attrition.

The names below are imported on first use (PEP 562): reading a catalog or a definition file
must not import Circe, pandas and the database drivers (a Flower ClientApp process reading
the site's config for a Cox answer would pay for them on every message).
"""

from importlib import import_module

_WHERE = {
    "AttritionStep": "attrition", "cohort_attrition": "attrition",
    "CohortCount": "build", "build_cohorts": "build", "cohort_counts": "build",
    "CohortDefinition": "definitions", "collect_definitions": "definitions",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
