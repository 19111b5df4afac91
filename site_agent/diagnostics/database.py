"""Database-level diagnostics (PhenotypeR ``databaseDiagnostics``), in OmopSketch layouts.

* :func:`summarise_omop_snapshot` mirrors ``OmopSketch::summariseOmopSnapshot()``
  (``result_type = "summarise_omop_snapshot"``).
* :func:`summarise_observation_period` mirrors ``OmopSketch::summariseObservationPeriod()``
  (``result_type = "summarise_observation_period"``, ``byOrdinal = TRUE``, no sex/age strata).

Everything is aggregated in SQL; only one row per ordinal comes back to Python.

Quantiles: ``q05 … q95`` and ``median`` are the linear-interpolation quantile (Hyndman & Fan
type 7, R's ``stats::quantile`` default, numpy ``method="linear"``), computed in the database
with DuckDB ``quantile_cont`` / PostgreSQL ``percentile_cont(p) WITHIN GROUP (ORDER BY x)``
(the SQL dbplyr writes for ``quantile()`` in R's in-database summaries). ``sd`` is the sample
standard deviation (``n - 1``, R's ``sd``); it is NA for a single value.

Deviations from the R packages (deliberate, or forced by our rules):

* snapshot: no ``general/snapshot_date`` row (it is ``Sys.Date()`` in R; our results must be
  deterministic so that cached units and files are reproducible). ``cdm_source`` holds only
  ``source_type`` (the dialect), the one field ``summary(cdmSource)`` is known to give.
  ``observation_period/count`` is, as in OmopSketch's code, the number of *person* rows.
* observation period: no ``density`` estimates; quantiles are written with
  ``estimate_type = "numeric"`` (they may be fractional), ``min``/``max`` as ``integer``.
  ``study_period_start``/``study_period_end`` settings are the first start and last end of
  the observation periods used (OmopSketch fills them from the validated, defaulted date range).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from optima_common.results import SummarisedResult
from site_agent.cdm.dialect import days_between, double, quantile
from site_agent.diagnostics.base import (
    Diagnostic,
    DiagnosticContext,
    fmt_number,
    is_missing,
    settings_row,
)

SNAPSHOT = "summarise_omop_snapshot"
OBS_PERIOD = "summarise_observation_period"
OMOPSKETCH = "OmopSketch"
#: OmopSketch's default estimates, minus density (see module docstring)
QUANTILES: tuple[tuple[str, float], ...] = (
    ("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))
DIST_ESTIMATES: tuple[str, ...] = ("mean", "sd", "min", "q05", "q25", "median", "q75", "q95", "max")


# ---------------------------------------------------------------- helpers (shared)
def fmt_text(value: Any) -> str | None:
    """A value as text; missing stays missing. Dates and timestamps as ``YYYY-MM-DD``."""
    if is_missing(value):
        return None
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d")
    return str(value)


def dist_sql(dialect: str, expr: str, prefix: str) -> list[str]:
    """Aggregate select items ``<prefix>_<estimate>`` for :data:`DIST_ESTIMATES` of ``expr``."""
    dbl = double(dialect)
    items = [f"avg(CAST({expr} AS {dbl})) AS {prefix}_mean",
             f"stddev_samp(CAST({expr} AS {dbl})) AS {prefix}_sd",
             f"min({expr}) AS {prefix}_min", f"max({expr}) AS {prefix}_max",
             f"count({expr}) AS {prefix}_n"]
    items += [f"{quantile(dialect, expr, p)} AS {prefix}_{name}" for name, p in QUANTILES]
    return items


def dist_records(row: pd.Series, prefix: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the distribution estimates of one variable (values NA when it has no data)."""
    out = []
    empty = int(row[f"{prefix}_n"] or 0) == 0
    for est in DIST_ESTIMATES:
        etype = "integer" if est in ("min", "max") else "numeric"
        value = None if empty else fmt_number(row[f"{prefix}_{est}"])
        out.append({**base, "estimate_name": est, "estimate_type": etype, "estimate_value": value})
    return out


def ordinal_label(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th`` … ``11th``, ``12th``, ``13th``, ``21st`` (OmopSketch)."""
    tens, unit = (n // 10) % 10, n % 10
    suffix = "th"
    if tens != 1 and unit in (1, 2, 3):
        suffix = {1: "st", 2: "nd", 3: "rd"}[unit]
    return f"{n}{suffix}"


# ---------------------------------------------------------------- snapshot
def cdm_version_label(raw: str | None) -> str:
    """CDMConnector's ``cdmVersion``: ``"5.4"`` when cdm_source says 5.4, else ``"5.3"``."""
    return "5.4" if raw is not None and re.search(r"5\.4", str(raw)) else "5.3"


def summarise_omop_snapshot(ctx: DiagnosticContext, unit: tuple = ()) -> SummarisedResult:
    """Mirror of ``OmopSketch::summariseOmopSnapshot()`` (see module docstring for deviations)."""
    cdm, s, v = ctx.cdm, ctx.cdm_schema, ctx.vocab_schema
    src = cdm.query_df(f"SELECT * FROM {s}.cdm_source")
    first = src.iloc[0].to_dict() if len(src) == 1 else {}  # OmopSketch ignores >1 row
    vocab = cdm.scalar(f"SELECT max(vocabulary_version) FROM {v}.vocabulary WHERE vocabulary_id = 'None'")
    if vocab is None:
        vocab = first.get("vocabulary_version")
    persons = int(cdm.scalar(f"SELECT count(*) FROM {s}.person"))
    dates = cdm.query_df(
        f"SELECT min(observation_period_start_date) AS lo, max(observation_period_end_date) AS hi "
        f"FROM {s}.observation_period").iloc[0]
    rows: list[tuple[str, str, str, str | None]] = [
        ("general", "person_count", "integer", str(persons)),
        ("general", "vocabulary_version", "character", fmt_text(vocab)),
        ("cdm", "source_name", "character", fmt_text(first.get("cdm_source_name"))),
        ("cdm", "version", "character", cdm_version_label(fmt_text(first.get("cdm_version")))),
        ("cdm", "holder_name", "character", fmt_text(first.get("cdm_holder"))),
        ("cdm", "release_date", "character", fmt_text(first.get("cdm_release_date"))),
        ("cdm", "description", "character", fmt_text(first.get("source_description"))),
        ("cdm", "documentation_reference", "character", fmt_text(first.get("source_documentation_reference"))),
        ("observation_period", "count", "integer", str(persons)),
        ("observation_period", "start_date", "date", fmt_text(dates["lo"]) if persons else None),
        ("observation_period", "end_date", "date", fmt_text(dates["hi"]) if persons else None),
        ("cdm_source", "source_type", "character", cdm.dialect),
    ]
    records = [{"cdm_name": ctx.cdm_name, "variable_name": var, "variable_level": None, "estimate_name": est,
                "estimate_type": etype, "estimate_value": value} for var, est, etype, value in rows]
    return SummarisedResult.from_records(records, [settings_row(1, SNAPSHOT, package_name=OMOPSKETCH)])


# ---------------------------------------------------------------- observation period
def _obs_period_sql(ctx: DiagnosticContext) -> str:
    d, s = ctx.cdm.dialect, ctx.cdm_schema
    per_ordinal = ", ".join(["count(*) AS n_records", "count(DISTINCT person_id) AS n_subjects",
                             "min(obs_start) AS first_start", "max(obs_end) AS last_end",
                             *dist_sql(d, "duration", "dur"), *dist_sql(d, "next_obs", "nxt")])
    return f"""
WITH op AS (
  SELECT person_id, observation_period_start_date AS obs_start, observation_period_end_date AS obs_end,
         row_number() OVER (PARTITION BY person_id
                            ORDER BY observation_period_start_date, observation_period_end_date) AS ordinal,
         lead(observation_period_start_date) OVER (PARTITION BY person_id
                            ORDER BY observation_period_start_date, observation_period_end_date) AS next_start
  FROM {s}.observation_period
  WHERE person_id IN (SELECT person_id FROM {s}.person)
), obs AS (
  SELECT person_id, ordinal, obs_start, obs_end,
         {days_between(d, 'obs_start', 'obs_end')} + 1 AS duration,
         {days_between(d, 'obs_end', 'next_start')} AS next_obs
  FROM op
), per_person AS (
  SELECT person_id, count(*) AS n FROM obs GROUP BY person_id
), all_rows AS (
  SELECT 0 AS ordinal, {per_ordinal} FROM obs
), ppl AS (
  SELECT 0 AS ordinal, {", ".join(dist_sql(d, "n", "rpp"))} FROM per_person
), by_ordinal AS (
  SELECT ordinal, {per_ordinal} FROM obs GROUP BY ordinal
)
SELECT a.*, {", ".join(f"p.rpp_{e}" for e in (*DIST_ESTIMATES, "n"))}
FROM all_rows a LEFT JOIN ppl p ON a.ordinal = p.ordinal
UNION ALL
SELECT b.*, {", ".join(f"NULL AS rpp_{e}" for e in (*DIST_ESTIMATES, "n"))} FROM by_ordinal b
"""


def summarise_observation_period(ctx: DiagnosticContext, unit: tuple = ()) -> SummarisedResult:
    """Mirror of ``OmopSketch::summariseObservationPeriod(byOrdinal = TRUE)`` without density.

    Periods of persons absent from ``person`` are dropped (OmopSketch's ``filterPersonId``).
    Group ``observation_period_ordinal``: ``all`` and ``1st``, ``2nd`` … (periods ordered by
    start date within person). ``Number records`` and ``Records per person`` only for
    ``all``; ``Duration in days`` = end - start + 1; ``Days to next observation period`` =
    next start - end, over the periods that have a next one (NA estimates for an ordinal where
    none has; the variable is left out when no person has a second period).
    """
    df = ctx.cdm.query_df(_obs_period_sql(ctx))
    df = df.sort_values("ordinal", kind="mergesort")
    records: list[dict[str, Any]] = []
    first_start = last_end = None
    all_row = df[df["ordinal"] == 0]
    any_next = bool(len(all_row)) and int(all_row.iloc[0]["nxt_n"] or 0) > 0
    for _, row in df.iterrows():  # one row per ordinal: a handful
        if int(row["n_records"] or 0) == 0:
            continue
        ordinal = int(row["ordinal"])
        level = "all" if ordinal == 0 else ordinal_label(ordinal)
        base = {"cdm_name": ctx.cdm_name, "group_name": "observation_period_ordinal", "group_level": level,
                "variable_level": None}
        if ordinal == 0:
            first_start, last_end = fmt_text(row["first_start"]), fmt_text(row["last_end"])
            records.append({**base, "variable_name": "Number records", "estimate_name": "count",
                            "estimate_type": "integer", "estimate_value": str(int(row["n_records"]))})
        records.append({**base, "variable_name": "Number subjects", "estimate_name": "count",
                        "estimate_type": "integer", "estimate_value": str(int(row["n_subjects"]))})
        if ordinal == 0:
            records += dist_records(row, "rpp", {**base, "variable_name": "Records per person"})
        records += dist_records(row, "dur", {**base, "variable_name": "Duration in days"})
        if any_next:  # OmopSketch drops the variable when nobody has a second period
            records += dist_records(row, "nxt", {**base, "variable_name": "Days to next observation period"})
    extra = {"study_period_start": first_start, "study_period_end": last_end} if first_start else {}
    settings = [settings_row(1, OBS_PERIOD, package_name=OMOPSKETCH, **extra)]
    return SummarisedResult.from_records(records, settings)


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(name="omop_snapshot", scope="database", result_types=(SNAPSHOT,), run=summarise_omop_snapshot),
    Diagnostic(name="observation_period", scope="database", result_types=(OBS_PERIOD,),
               run=summarise_observation_period, params={"by_ordinal": True, "density": False}),
]
