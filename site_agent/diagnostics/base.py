"""What every diagnostic module provides, and what the runner gives it.

A diagnostic is a pure function of the CDM, the instantiated cohorts and its parameters.
It returns an *unsuppressed* :class:`SummarisedResult` (result ids from 1); the runner
binds all results, applies min-cell suppression once, and writes the CSV. The runner also
makes diagnostics incremental: each *unit* of work (the database, one cohort, or one
pair of cohorts, by the diagnostic's ``scope``) is keyed by a hash of the diagnostic's
name and parameters, the cohort definitions' sha256 and the CDM fingerprint, and its
result is cached in the site's write schema. So a diagnostic must:

* compute everything in SQL inside the database (aggregates only come back to Python;
  never fetch person-level rows into Python for large tables);
* depend only on its inputs (no clock, no randomness), and return rows in any order (the
  runner sorts);
* emit, for every result type it declares, a settings row even when it has no data rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from optima_common.results import SummarisedResult
from site_agent import __version__
from site_agent.cdm.connection import CdmConnection
from site_agent.cohorts.definitions import CohortDefinition

PACKAGE_NAME = "optima-federated"
PACKAGE_VERSION = __version__
Scope = Literal["database", "cohort", "pair"]


@dataclass(frozen=True)
class DiagnosticContext:
    """Everything a diagnostic may read. Cohorts are already built in ``cohort_table``."""

    cdm: CdmConnection
    cdm_name: str
    cohorts: tuple[CohortDefinition, ...]
    # per-run memo of set-based queries answering every cohort at once (cohorts do not change within a run)
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def cohort_table(self) -> str:
        return f"{self.cdm.write_schema}.cohort"

    @property
    def cdm_schema(self) -> str:
        return self.cdm.cdm_schema

    @property
    def vocab_schema(self) -> str:
        return self.cdm.vocab_schema


@dataclass(frozen=True)
class Diagnostic:
    """A registered diagnostic.

    ``run(ctx, unit)`` gets ``unit = ()`` for scope "database", ``(cohort,)`` for "cohort"
    and ``(reference, comparator)`` for "pair" (each unordered pair once, in catalog order).
    ``params`` are part of the cache key: change a parameter and the unit is recomputed.
    """

    name: str
    scope: Scope
    result_types: tuple[str, ...]
    run: Callable[[DiagnosticContext, tuple[CohortDefinition, ...]], SummarisedResult]
    params: dict = field(default_factory=dict)
    package_name: str = PACKAGE_NAME  # for the settings-only rows when there is no unit (one cohort, no pair)


SIGNIFICANT_DIGITS = 10


def fmt_float(x: float) -> str:
    """A non-integer estimate as text, to 10 significant digits.

    R writes 15, but sums over parallel aggregation (DuckDB, PostgreSQL) differ run to run
    in the last few of those digits; 10 keeps the CSV byte-identical between runs.
    """
    return format(x, f".{SIGNIFICANT_DIGITS}g")


def is_missing(value: Any) -> bool:
    """None, NaN, NA or NaT (an array-like value is not missing)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_number(value: Any) -> str | None:
    """A number as R's ``as.character()`` writes it: 10 significant digits (fmt_float), no ``.0``."""
    if is_missing(value):
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    x = float(value)
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return fmt_float(x)


def settings_row(result_id: int, result_type: str, *, package_name: str = PACKAGE_NAME,
                 package_version: str = PACKAGE_VERSION, **extra) -> dict:
    """One settings row; ``group``/``strata``/``additional`` are derived from the data when omitted.

    Provenance is honest for an R reader: ``package_name``/``package_version`` name this
    program (optima-federated and its version), and ``result_layout`` names the R package
    whose summarised_result layout the rows follow (e.g. IncidencePrevalence), without a version.
    """
    layout = str(extra.pop("package_name", None) or package_name)
    row = {"result_id": result_id, "result_type": result_type, "package_name": PACKAGE_NAME,
           "package_version": package_version, "min_cell_count": "0"}
    row.update({k: (None if v is None else str(v)) for k, v in extra.items()})
    row["result_layout"] = layout
    return row
