"""Run independent diagnostic units on several PostgreSQL connections at once.

Each PostgreSQL statement runs on one core, and the diagnostics' TEMP tables cannot use
parallel workers, so a suite run on one connection keeps one core of the server busy. The
units of different diagnostic *families* share nothing: each family's set-based work (the
denominator TEMP table of incidence and prevalence, the all-cohort characteristics or
large-scale frame, the pair counts of overlap and timing) lives in the per-run memo
(``ctx.memo``) or per-connection memo (``cdm.memo``) of the connection that computed it. So
the plan is cut into one group per family, every unit of a family on the same connection
(nothing set-based is computed twice), and the groups are handed out heaviest first to N
worker threads, each with its own :class:`CdmConnection` opened like the caller's (URL,
schemas, statement timeout, session options) and its own :class:`DiagnosticContext`.

The workers only compute. Each finished unit goes back to the calling thread, which stores
it in the unit cache on the caller's connection (one writer, as in a sequential run: a unit
is committed as soon as it is computed) and reports progress; the runner then binds the
results in plan order, so the release is byte-identical to a sequential run's. The first
error stops the run: the other workers' running statements are cancelled, the threads
joined, every worker connection closed, and the error raised as it was raised in the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from optima_common.results import SummarisedResult
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.pool import Worker, run_on_connections
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics.base import Diagnostic, DiagnosticContext

#: diagnostics whose units share memoised work (TEMP tables, all-cohort frames) run as one group
FAMILY = {
    "incidence": "population", "prevalence": "population",  # one denominator TEMP table
    "cohort_count": "cohort_summary", "cohort_attrition": "cohort_summary",
    "cohort_overlap": "cohort_summary", "cohort_timing": "cohort_summary",
    "code_use": "codelists", "cohort_code_use": "codelists",
    "orphan_code_use": "orphans", "unmapped_codes": "orphans",
    "omop_snapshot": "database", "observation_period": "database",
}
#: relative cost of a family's group (PostgreSQL at 1M persons, docs/performance.md): heaviest first.
#: Per family, not per unit: most of a family's work is its set-based queries for all cohorts at once
WEIGHT = {"population": 5, "characteristics": 4, "large_scale": 4, "codelists": 3, "orphans": 2,
          "cohort_summary": 1, "database": 1}
_MODULE_FAMILY = {"characteristics": "characteristics", "large_scale": "large_scale"}


def family(diag: Diagnostic) -> str:
    """The group a diagnostic's units run in: its family, else its own name."""
    if diag.name in FAMILY:
        return FAMILY[diag.name]
    module = getattr(diag.run, "__module__", "").rsplit(".", 1)[-1]
    return _MODULE_FAMILY.get(module, diag.name)


@dataclass(frozen=True)
class Unit:
    index: int  # position in the plan
    diag: Diagnostic
    unit: tuple[CohortDefinition, ...]


def groups_of(units: Sequence[Unit]) -> list[list[Unit]]:
    """One group per family, units in plan order; heaviest family first (ties: plan order)."""
    by: dict[str, list[Unit]] = {}
    for u in units:
        by.setdefault(family(u.diag), []).append(u)
    return sorted(by.values(), key=lambda g: -WEIGHT.get(family(g[0].diag), 1))


def run_units(cdm: CdmConnection, ctx: DiagnosticContext, units: Sequence[Unit], connections: int,
              done: Callable[[Unit, SummarisedResult, float], None], say: Callable[[str], None]) -> None:
    """Compute ``units`` on up to ``connections`` new connections; ``done(unit, result, seconds)``
    is called on this thread as each finishes (in completion order). Raises the first worker error.

    A server that refuses more connections gets fewer workers; refusing every one, none: the
    caller then computes what is left itself (:func:`site_agent.cdm.pool.run_on_connections`)."""

    def work(wctx: DiagnosticContext, group: list[Unit], worker: Worker) -> None:
        for u in group:
            if worker.stopped:
                return
            started = time.perf_counter()
            res = u.diag.run(wctx, u.unit)
            worker.emit((u, res, time.perf_counter() - started))

    run_on_connections(cdm, groups_of(units), connections,
                       setup=lambda conn: DiagnosticContext(cdm=conn, cdm_name=ctx.cdm_name, cohorts=ctx.cohorts),
                       work=work, deliver=lambda item: done(*item), say=say, what=f"computing {len(units)} units")
