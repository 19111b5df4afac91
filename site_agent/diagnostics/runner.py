"""Run the diagnostics suite: build stale cohorts, compute or reuse each unit, suppress, write.

Data flow: definitions -> cohorts (rebuilt only if stale) -> units of work (database,
cohort, pair) -> cache (write schema) -> bind -> merge identical settings -> suppress
(min cell count, before anything is written) -> summarised_result CSV (+ optional HTML).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optima_common.fileio import write_atomic
from optima_common.results import SummarisedResult, bind_frames
from site_agent.cdm import pool
from site_agent.cdm.check import validate_cdm
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.fingerprint import cdm_fingerprint
from site_agent.cohorts import build_cohorts
from site_agent.cohorts.build import ensure_results_tables
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.cohorts.state import stale_cohorts
from site_agent.diagnostics import cache, parallel, release_cache
from site_agent.diagnostics.base import Diagnostic, DiagnosticContext, settings_row
from site_agent.disclosure import release_control, withhold_nested_cohorts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    computed: int
    reused: int
    cohorts_built: int
    out: Path | None
    result: SummarisedResult
    secondary: pd.DataFrame | None = None  # secondary suppressions and the relation behind each

    @property
    def line(self) -> str:
        return f"diagnostics: {self.computed} computed, {self.reused} reused"


def registry() -> list[Diagnostic]:
    """Every diagnostic, in the order results are written."""
    from site_agent.diagnostics import (
        characteristics,
        codelists,
        cohort_summary,
        database,
        large_scale,
        orphans,
        population,
    )

    return [*database.DIAGNOSTICS, *cohort_summary.DIAGNOSTICS, *codelists.DIAGNOSTICS, *orphans.DIAGNOSTICS,
            *characteristics.DIAGNOSTICS, *large_scale.DIAGNOSTICS, *population.DIAGNOSTICS]


def units_of(diagnostic: Diagnostic, cohorts: list[CohortDefinition]) -> Iterable[tuple[CohortDefinition, ...]]:
    if diagnostic.scope == "database":
        return [()]
    if diagnostic.scope == "cohort":
        return [(c,) for c in cohorts]
    return list(itertools.combinations(cohorts, 2))


def default_cdm_name(cdm: CdmConnection) -> str:
    df = cdm.query_df(f"SELECT * FROM {cdm.cdm_schema}.cdm_source")
    for col in ("cdm_source_abbreviation", "cdm_source_name"):
        if col in df.columns and len(df) and df[col].iloc[0]:
            return str(df[col].iloc[0])
    return "cdm"


def merge_identical_settings(result: SummarisedResult) -> SummarisedResult:
    """One result_id per distinct settings, as omopgenerics' bind does (first-seen order)."""
    s = result.settings
    if s.empty:
        return result
    cols = [c for c in s.columns if c != "result_id"]
    filled = s[cols].astype(object).where(s[cols].notna(), "\x00").astype(str)  # NaN-safe under pandas 3
    key = filled.agg("\x1f".join, axis=1)
    first = {k: i + 1 for i, k in enumerate(dict.fromkeys(key))}
    mapping = dict(zip(s["result_id"], key.map(first)))
    new_s = s.assign(result_id=s["result_id"].map(mapping)).drop_duplicates("result_id")
    new_d = result.data.assign(result_id=result.data["result_id"].map(mapping))
    return SummarisedResult(new_d, new_s)


def run_diagnostics(
    cdm: CdmConnection,
    definitions: list[CohortDefinition],
    *,
    out: Path | None,
    min_cell_count: int = 5,
    cdm_name: str | None = None,
    diagnostics: list[Diagnostic] | None = None,
    progress: Callable[[str], None] | None = None,
    connections: int | None = None,
) -> RunSummary:
    """``connections``: PostgreSQL connections computing units at once (:mod:`.parallel`; default
    ``OPTIMA_PG_CONNECTIONS`` or min(2, cores)); DuckDB always runs the units one after another."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr))
    if not cdm.is_server:
        connections = 1
    elif connections is None:
        connections = pool.default_connections(cdm)
    else:
        connections = pool.check_connections(connections)
    validate_cdm(cdm)
    ensure_results_tables(cdm)
    cache.ensure_tables(cdm)
    fingerprint = cdm_fingerprint(cdm)
    stale = stale_cohorts(cdm, definitions, fingerprint)
    if stale:
        progress(f"building {len(stale)} cohort(s): {', '.join(d.cohort_name for d in stale)}")
        build_cohorts(cdm, stale, connections)
    ctx = DiagnosticContext(cdm=cdm, cdm_name=cdm_name or default_cdm_name(cdm), cohorts=tuple(definitions))
    diagnostics = registry() if diagnostics is None else diagnostics
    plan = [(d, u) for d in diagnostics for u in units_of(d, definitions)]
    have = cache.cached_keys(cdm)
    keys = [cache.unit_key(d.name, {**d.params, "cdm_name": ctx.cdm_name}, fingerprint, u) for d, u in plan]
    release_cache.ensure_table(cdm)
    rkey = release_cache.release_key(keys, [d.name for d in diagnostics], min_cell_count, ctx.cdm_name)
    if all(k in have for k in keys):  # nothing changed: the release made from these very units, if kept
        hit = release_cache.load(cdm, rkey)
        if hit is not None:
            text, released, secondary, withheld = hit
            _say_withheld(progress, withheld, min_cell_count)
            progress(f"all {len(plan)} units unchanged: the release of the previous run is reused")
            if out is not None:
                write_atomic(out, text.encode("utf-8"))
            return RunSummary(0, len(plan), len(stale), out, released, secondary)
    results: list[tuple[pd.DataFrame, pd.DataFrame]] = []
    computed = reused = 0
    for diag in diagnostics:  # no unit (e.g. pairs of a single cohort): still say it ran, found nothing
        if not units_of(diag, definitions):
            empty = SummarisedResult.from_records(
                [], [settings_row(i, rt, package_name=diag.package_name) for i, rt in enumerate(diag.result_types, 1)])
            results.append((empty.data, empty.settings))
    fresh: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}  # plan index -> computed on a worker
    todo = [parallel.Unit(i, d, u) for i, ((d, u), key) in enumerate(zip(plan, keys), start=1) if key not in have]
    n_groups = len(parallel.groups_of(todo)) if connections > 1 else 1
    if n_groups > 1:  # families that share no memoised work: on several PostgreSQL connections at once
        def done(u: parallel.Unit, res: SummarisedResult, seconds: float) -> None:
            label = _label(u.diag, u.unit)
            cache.store(cdm, keys[u.index - 1], u.diag.name, label, res)
            fresh[u.index] = (res.data, res.settings)
            progress(f"[{u.index}/{len(plan)}] {label}: {seconds:.1f}s")

        parallel.run_units(cdm, ctx, todo, connections, done, progress)  # what it could not: below
    for i, ((diag, unit), key) in enumerate(zip(plan, keys), start=1):
        label = _label(diag, unit)
        if key in have:
            results.append(cache.load(cdm, key))
            reused += 1
            continue
        if i in fresh:
            results.append(fresh.pop(i))
            computed += 1
            continue
        started = time.perf_counter()
        res = diag.run(ctx, unit)
        cache.store(cdm, key, diag.name, label, res)
        results.append((res.data, res.settings))
        computed += 1
        progress(f"[{i}/{len(plan)}] {label}: {time.perf_counter() - started:.1f}s")
    bound = merge_identical_settings(bind_frames(results))
    _, withheld = withhold_nested_cohorts(bound, min_cell_count)
    _say_withheld(progress, withheld, min_cell_count)
    protection = release_control(bound, min_cell_count)  # primary + secondary, audited
    released = protection.result
    text = released.to_csv_text()
    secondary = protection.secondary_frame()
    release_cache.store(cdm, rkey, text, secondary, list(withheld))
    if out is not None:
        write_atomic(out, text.encode("utf-8"))
    return RunSummary(computed, reused, len(stale), out, released, secondary)


def _label(diag: Diagnostic, unit: tuple[CohortDefinition, ...]) -> str:
    return f"{diag.name}" + (f" [{' x '.join(c.cohort_name for c in unit)}]" if unit else "")


def _say_withheld(progress: Callable[[str], None], withheld: Iterable[str], min_cell_count: int) -> None:
    for name in withheld:
        progress(f"withheld every number about cohort {name}: it differs from a cohort containing it "
                 f"by fewer than {min_cell_count} persons")


def count_small_cells(result: SummarisedResult, min_cell_count: int) -> int:
    """Count estimates (names containing 'count') with a value between 1 and min-1."""
    d = result.data
    counts = d[d["estimate_name"].str.contains("count", case=False)]
    values = pd.to_numeric(counts["estimate_value"], errors="coerce")
    return int(((values > 0) & (values < min_cell_count)).sum())
