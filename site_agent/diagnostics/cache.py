"""Incremental state of the diagnostics, kept with the site's database (write schema).

``optima_diagnostics_cache`` (write schema) holds the unsuppressed result of each unit of
work, keyed by a hash of everything it depends on: the diagnostic and its parameters, the
cohorts' ids, names and definition sha256, and the CDM fingerprint
(:mod:`site_agent.cdm.fingerprint`). Each unit is committed as soon as it is computed, so
a run killed halfway resumes where it stopped. Which cohorts are built is tracked by
:mod:`site_agent.cohorts.state`.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from optima_common.results import SummarisedResult
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.dialect import placeholder
from site_agent.cohorts.definitions import CohortDefinition

CACHE_TABLE = "optima_diagnostics_cache"


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def unit_key(diagnostic: str, params: dict, fingerprint: str, unit: tuple[CohortDefinition, ...]) -> str:
    payload = {
        "diagnostic": diagnostic,
        "params": params,
        "cdm": fingerprint,
        "cohorts": [[c.cohort_definition_id, c.cohort_name, c.sha256] for c in unit],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def ensure_tables(cdm: CdmConnection) -> None:
    ws = cdm.write_schema
    with cdm.transaction() as script:
        script.execute(f"CREATE TABLE IF NOT EXISTS {ws}.{CACHE_TABLE} (unit_key VARCHAR(64) PRIMARY KEY, "
                       "diagnostic VARCHAR(100) NOT NULL, unit VARCHAR(1000) NOT NULL, payload TEXT NOT NULL)")


def cached_keys(cdm: CdmConnection) -> set[str]:
    return set(cdm.query_df(f"SELECT unit_key FROM {cdm.write_schema}.{CACHE_TABLE}")["unit_key"])


def load(cdm: CdmConnection, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cached (data, settings) frames of a unit, as stored (already validated when stored)."""
    payload = cdm.scalar(f"SELECT payload FROM {cdm.write_schema}.{CACHE_TABLE} WHERE unit_key = {_sql_text(key)}")
    doc = json.loads(payload)
    return pd.DataFrame(doc["data"]), pd.DataFrame(doc["settings"])


def store(cdm: CdmConnection, key: str, diagnostic: str, unit: str, result: SummarisedResult) -> None:
    doc = {"data": _columns(result.data), "settings": _columns(result.settings)}
    ws = cdm.write_schema
    p = placeholder(cdm.dialect)
    with cdm.transaction() as script:  # bound parameters: the payload is not parsed as a SQL literal
        script.cursor.execute(f"DELETE FROM {ws}.{CACHE_TABLE} WHERE unit_key = {p}", (key,))
        script.cursor.execute(f"INSERT INTO {ws}.{CACHE_TABLE} VALUES ({p}, {p}, {p}, {p})",
                              (key, diagnostic, unit[:1000], json.dumps(doc, sort_keys=True)))


def _columns(df: pd.DataFrame) -> dict[str, list]:
    """Column-oriented, JSON-safe: missing values as null, result_id as int."""
    out = {}
    for col in df.columns:
        values = df[col].astype(object).where(df[col].notna(), None).tolist()
        out[col] = [int(v) for v in values] if col == "result_id" else values
    return out
