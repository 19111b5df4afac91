"""The released result of a diagnostics run, kept so that a re-run with nothing changed is cheap.

After every unit of work the suite still has to bind ~125,000 rows, withhold nested cohorts,
suppress and audit them (:func:`site_agent.disclosure.release_control`) and write the CSV:
about 20 CPU seconds, whatever the CDM's size. That release is a pure function of the units'
results (each keyed by :func:`site_agent.diagnostics.cache.unit_key`: diagnostic, parameters,
cohorts, CDM fingerprint), the minimum cell count, the CDM name and the code that binds,
suppresses and audits. ``optima_release_cache`` (write schema) keeps the released CSV text
and the secondary-suppression frame under a hash of all of those, the code included (the
source of the release modules), so a changed rule, count or unit never meets an old release.
Only the newest ``KEEP`` releases are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from functools import cache as memoize
from pathlib import Path

import pandas as pd

from optima_common.results import SummarisedResult
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.dialect import placeholder

TABLE = "optima_release_cache"
KEEP = 4
# every module whose code decides what a run releases from its units' results
RELEASE_MODULES = ("optima_common.results", "optima_common.disclosure", "site_agent.disclosure",
                   "site_agent.suppression", "site_agent.diagnostics.runner", "site_agent.diagnostics.release_cache")


@memoize
def code_digest() -> str:
    """sha256 over the source of the release modules (a package: every .py file in it)."""
    h = hashlib.sha256()
    for name in RELEASE_MODULES:
        __import__(name)
        path = Path(sys.modules[name].__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def release_key(unit_keys: list[str], diagnostics: list[str], min_cell_count: int, cdm_name: str) -> str:
    payload = {"units": unit_keys, "diagnostics": diagnostics, "min_cell_count": int(min_cell_count),
               "cdm_name": cdm_name, "code": code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def ensure_table(cdm: CdmConnection) -> None:
    with cdm.transaction() as script:
        script.execute(f"CREATE TABLE IF NOT EXISTS {cdm.write_schema}.{TABLE} (release_key VARCHAR(64) PRIMARY KEY, "
                       "stored_seq BIGINT NOT NULL, released TEXT NOT NULL, secondary TEXT NOT NULL, "
                       "withheld TEXT NOT NULL)")


def load(cdm: CdmConnection, key: str) -> tuple[str, SummarisedResult, pd.DataFrame | None, list[str]] | None:
    """(CSV text, released result, secondary frame, withheld cohorts) stored under ``key``, or None."""
    df = cdm.query_df(f"SELECT released, secondary, withheld FROM {cdm.write_schema}.{TABLE} "
                      f"WHERE release_key = {_text(key)}")
    if df.empty:
        return None
    text, secondary, withheld = (str(df.iloc[0][c]) for c in ("released", "secondary", "withheld"))
    sec = json.loads(secondary)
    frame = None if sec is None else pd.read_json(io.StringIO(sec), orient="split")
    return text, SummarisedResult.from_csv_text(text, source="cached release"), frame, json.loads(withheld)


def store(cdm: CdmConnection, key: str, text: str, secondary: pd.DataFrame | None, withheld: list[str]) -> None:
    ws = cdm.write_schema
    sec = json.dumps(None if secondary is None else secondary.to_json(orient="split", index=False))
    p = placeholder(cdm.dialect)
    with cdm.transaction() as script:  # bound parameters: the ~30 MB text is not parsed as a SQL literal
        script.cursor.execute(f"DELETE FROM {ws}.{TABLE} WHERE release_key = {p}", (key,))
        seq = f"(SELECT COALESCE(MAX(stored_seq), 0) + 1 FROM {ws}.{TABLE})"
        script.cursor.execute(f"INSERT INTO {ws}.{TABLE} VALUES ({p}, {seq}, {p}, {p}, {p})",
                              (key, text, sec, json.dumps(withheld)))
        script.execute(f"DELETE FROM {ws}.{TABLE} WHERE stored_seq <= (SELECT MAX(stored_seq) FROM {ws}.{TABLE}) - {KEEP}")


def _text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
