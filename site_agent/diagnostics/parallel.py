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

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from optima_common.errors import CdmConnectionError, ConfigError
from optima_common.results import SummarisedResult
from site_agent.cdm.connection import CdmConnection, connect_cdm
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


def default_connections(cdm: CdmConnection) -> int:
    """1 on DuckDB (one in-process engine, multi-threaded already); on PostgreSQL
    ``OPTIMA_PG_CONNECTIONS`` or min(2, cores of this machine)."""
    if not cdm.is_server:
        return 1
    env = os.environ.get("OPTIMA_PG_CONNECTIONS")
    if env:
        return check_connections(int(env) if env.strip().isdigit() else -1, "OPTIMA_PG_CONNECTIONS")
    return min(2, os.cpu_count() or 1)


def check_connections(n: int, what: str = "connections") -> int:
    if n < 1:
        raise ConfigError(f"{what} must be a whole number of 1 or more")
    return n


def open_like(cdm: CdmConnection) -> CdmConnection:
    """Another connection to the same database, schemas and statement timeout."""
    return connect_cdm(cdm.url, cdm_schema=cdm.cdm_schema, write_schema=cdm.write_schema,
                       vocab_schema=cdm.vocab_schema, statement_timeout_seconds=cdm.statement_timeout)


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

    A server that refuses more connections (``max_connections``, a role's ``CONNECTION LIMIT``)
    gets fewer workers; refusing every one, none: the caller then computes what is left itself."""
    groups = groups_of(units)
    todo: queue.Queue = queue.Queue()
    for g in groups:
        todo.put(g)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    workers: list[CdmConnection] = []
    threads: list[threading.Thread] = []

    def work(conn: CdmConnection) -> None:
        wctx = DiagnosticContext(cdm=conn, cdm_name=ctx.cdm_name, cohorts=ctx.cohorts)
        try:
            while not stop.is_set():
                try:
                    group = todo.get_nowait()
                except queue.Empty:
                    return
                for u in group:
                    if stop.is_set():
                        return
                    started = time.perf_counter()
                    res = u.diag.run(wctx, u.unit)
                    results.put((u, res, time.perf_counter() - started))
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            results.put(exc)
        finally:
            results.put(None)  # this worker has ended

    try:
        for _ in range(min(connections, len(groups))):
            try:
                workers.append(open_like(cdm))
            except CdmConnectionError as exc:
                say(f"{exc}: computing on {len(workers)} connection(s)" if workers
                    else f"{exc}: computing on the command's own connection")
                break
        if workers:
            say(f"computing {len(units)} units on {len(workers)} PostgreSQL connections")
        for i, conn in enumerate(workers):
            t = threading.Thread(target=work, args=(conn,), name=f"diagnostics-{i + 1}", daemon=True)
            threads.append(t)
            t.start()
        running = len(threads)
        while running:
            item = results.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                done(*item)
    except BaseException:
        stop.set()
        for conn in workers:
            _cancel(conn)
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
        for conn in workers:
            conn.close()


def _cancel(conn: CdmConnection) -> None:
    """Cancel the statement a worker's connection is running, if any (psycopg2 allows it from
    another thread); the worker then raises, which is ignored as the run has failed already."""
    raw = getattr(getattr(conn._conn, "connection", None), "dbapi_connection", None)
    if raw is not None and hasattr(raw, "cancel"):
        try:
            raw.cancel()
        except Exception:  # noqa: BLE001 - the connection may be closing; join() still waits for it
            pass
