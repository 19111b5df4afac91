"""What the site has released, so that a later release cannot be subtracted from an earlier one.

A scheduled re-run after a database refresh, or another study, releases the same counts again.
If a cohort had 103 persons last time and 105 now, each number passes min-cell suppression, but
their difference (2) describes two persons: a suppressed cell recovered by subtraction.

:class:`ReleaseHistory` keeps every released **count** cell (estimate names containing
"count", as :mod:`site_agent.suppression` defines counts) in ``state_dir/release_history.sqlite3``:
result type, the key columns (cdm, group, strata, variable, estimate, additional), value,
manifest id and time. The result_id and the rest of the settings are not part of the key, so a
new package version or result numbering cannot hide a repeat (at worst two different quantities
share a key and something is blocked that did not need to be).

**Choice: block, not coarsen.** :meth:`ReleaseHistory.guard` suppresses (``"-"``) every count
whose value differs from *any* earlier released value of the same key by 1..min-1, then runs
:func:`~site_agent.suppression.suppress` and :func:`~site_agent.disclosure.blank_linked` again so
the blocked cell takes its cell, its group (a blocked "number subjects" blanks the cohort's
whole group), its additive family (complementary suppression) and linked tables with it.
Rounding would leave differences of rounded values that still narrow the new persons down,
and would change numbers researchers pool; blocking keeps every released number exact. A
blocked key is released again once it has moved at least min away from every released value.
Only released cells are recorded (:meth:`ReleaseHistory.record`, called when a bundle is
queued for review or sent), so a blocked value never becomes a reference itself. Record at
queue time: a bundle waiting for review counts as released (if it is then rejected, the
history only errs on the safe side).

Residual risk: differences between *different* keys across releases (e.g. a cohort in release 1
against a nested cohort in release 2) are not compared here; :mod:`site_agent.disclosure`
covers nesting within one release only.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.results import SUPPRESSED, SummarisedResult
from site_agent.disclosure import blank_linked
from site_agent.suppression import suppress

HISTORY_FILE = "release_history.sqlite3"
KEY_COLUMNS = ("cdm_name", "group_name", "group_level", "strata_name", "strata_level", "variable_name",
               "variable_level", "estimate_name", "additional_name", "additional_level")
_NA = "\x00NA"


@dataclass(frozen=True)
class BlockedCell:
    """A count withheld because an earlier release would reveal the difference."""

    result_type: str
    group_level: str
    strata_level: str
    variable_name: str
    variable_level: str | None
    estimate_name: str
    value: float  # the value withheld now (site-internal; do not send it anywhere)
    earlier: float  # the released value it is too close to
    earlier_manifest_id: str


@dataclass(frozen=True)
class GuardReport:
    blocked: tuple[BlockedCell, ...]  # withheld because of the history
    also_suppressed: int  # further estimates blanked by re-suppression (cells, groups, families, links)

    @property
    def changed(self) -> bool:
        return bool(self.blocked)


def _cell_keys(data: pd.DataFrame) -> pd.Series:
    parts = [data[c].fillna(_NA).astype(str) for c in KEY_COLUMNS]
    return parts[0].str.cat(parts[1:], sep="\x1f")


def _count_rows(result: SummarisedResult) -> pd.DataFrame:
    """Released numeric count cells with their result type and key."""
    d = result.data
    rtype = d["result_id"].map(dict(zip(result.settings["result_id"], result.settings["result_type"])))
    value = pd.to_numeric(d["estimate_value"], errors="coerce")
    is_count = d["estimate_name"].str.lower().str.contains("count", regex=False) & value.notna()
    rows = d.loc[is_count].assign(result_type=rtype[is_count], value=value[is_count])
    return rows.assign(cell_key=_cell_keys(rows))


class ReleaseHistory:
    """The released count cells of one site (SQLite in ``state_dir``)."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / HISTORY_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS released (result_type TEXT NOT NULL, cell_key TEXT NOT NULL, "
                        + ", ".join(f"{c} TEXT" for c in KEY_COLUMNS)
                        + ", value REAL NOT NULL, manifest_id TEXT NOT NULL, released_at TEXT NOT NULL, "
                          "UNIQUE (manifest_id, result_type, cell_key))")
            con.execute("CREATE INDEX IF NOT EXISTS released_key ON released (result_type, cell_key)")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA synchronous=FULL")
        return con

    def earlier(self, result_type: str | None = None) -> pd.DataFrame:
        """Recorded cells (all, or of one result type)."""
        con = self._connect()
        try:
            where, args = ("WHERE result_type = ?", (result_type,)) if result_type else ("", ())
            return pd.read_sql_query(f"SELECT * FROM released {where}", con, params=args)
        finally:
            con.close()

    def guard(self, result: SummarisedResult, min_cell_count: int) -> tuple[SummarisedResult, GuardReport]:
        """The result with every count that an earlier release would reveal by subtraction withheld."""
        if min_cell_count < 2 or result.data.empty:
            return result, GuardReport((), 0)
        new = _count_rows(result)
        if new.empty:
            return result, GuardReport((), 0)
        old = self.earlier()
        old = old[old["cell_key"].isin(set(new["cell_key"]))]
        pairs = new.reset_index().merge(old[["result_type", "cell_key", "value", "manifest_id"]],
                                        on=["result_type", "cell_key"], suffixes=("", "_earlier"))
        gap = (pairs["value"] - pairs["value_earlier"]).abs()
        hits = pairs[(gap > 0) & (gap < min_cell_count)].sort_values(["index", "value_earlier"], kind="mergesort")
        hits = hits.drop_duplicates("index")
        if hits.empty:
            return result, GuardReport((), 0)
        data = result.data.copy()
        data.loc[hits["index"].to_numpy(), "estimate_value"] = SUPPRESSED
        before = (data["estimate_value"] == SUPPRESSED).to_numpy()
        protected = blank_linked(suppress(result.with_data(data), min_cell_count))
        after = (protected.data["estimate_value"] == SUPPRESSED).to_numpy()
        blocked = tuple(BlockedCell(r.result_type, r.group_level, r.strata_level, r.variable_name,
                                    None if pd.isna(r.variable_level) else r.variable_level, r.estimate_name,
                                    float(r.value), float(r.value_earlier), r.manifest_id)
                        for r in hits.itertuples())
        return protected, GuardReport(blocked, int(np.sum(after & ~before)))

    def record(self, result: SummarisedResult, manifest_id: str) -> int:
        """Remember the released count cells of ``result`` (recording a manifest twice is a no-op)."""
        rows = _count_rows(result)
        now = dt.datetime.now(dt.UTC).isoformat()
        values = [(r["result_type"], r["cell_key"], *[None if pd.isna(r[c]) else r[c] for c in KEY_COLUMNS],
                   float(r["value"]), manifest_id, now) for _, r in rows.iterrows()]
        con = self._connect()
        try:
            with con:
                cur = con.executemany(f"INSERT OR IGNORE INTO released VALUES ({', '.join('?' * (len(KEY_COLUMNS) + 5))})",
                                      values)
                return cur.rowcount
        finally:
            con.close()
