"""Instantiate cohorts on a CDM: one transaction per cohort, counts and attrition."""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel

from optima_common.errors import CohortBuildError
from site_agent.cdm.check import validate_cdm
from site_agent.cdm.connection import CdmConnection
from site_agent.cdm.ddl import results_ddl
from site_agent.cdm.dialect import index_and_analyze
from site_agent.cdm.fingerprint import cdm_fingerprint
from site_agent.cdm.pool import (
    check_connections,
    default_connections,
    run_on_connections,
)
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.cohorts.sql import cohort_sql
from site_agent.cohorts.state import state_statements

log = logging.getLogger(__name__)


class CohortCount(BaseModel):
    cohort_definition_id: int
    cohort_name: str
    number_records: int
    number_subjects: int


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def ensure_results_tables(cdm: CdmConnection) -> None:
    try:
        with cdm.transaction() as script:
            script.execute_all(results_ddl(cdm.write_schema, create_schema=not cdm.schema_exists(cdm.write_schema)))
    except Exception as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise CohortBuildError(
            f"cannot create the cohort tables in write schema '{cdm.write_schema}' on {cdm.display_url}: {first}",
            hint="create the schema and grant the agent's role CREATE on it (deploy/postgres/site_agent_role.sql)",
        ) from None


def build_cohorts(cdm: CdmConnection, definitions: list[CohortDefinition],
                  connections: int | None = None) -> list[CohortCount]:
    """Build every definition into ``<write_schema>.cohort``; returns counts in the given order.

    All SQL is generated before anything runs, so a bad definition fails the whole run
    before the database is touched. Each cohort is replaced inside its own transaction:
    if its SQL fails, the cohort keeps its previous rows (or none) and nothing partial stays.

    On PostgreSQL the cohorts are built on ``connections`` connections at once (default
    ``OPTIMA_PG_CONNECTIONS`` or min(2, cores); :mod:`site_agent.cdm.pool`): each cohort's SQL
    keeps to its session's TEMP tables and to its own ``cohort_definition_id`` in the shared
    tables, so builds of different cohorts do not meet. A failing cohort stops the others: their
    running builds are cancelled and rolled back, and those finished stay built, as in a
    sequential run.
    """
    validate_cdm(cdm)
    plans = [
        (d, cohort_sql(d, dialect=cdm.dialect, cdm_schema=cdm.cdm_schema,
                       vocab_schema=cdm.vocab_schema, write_schema=cdm.write_schema))
        for d in definitions
    ]
    ensure_results_tables(cdm)
    fingerprint = cdm_fingerprint(cdm)
    n = default_connections(cdm) if connections is None else check_connections(connections)
    built: set[int] = set()
    if cdm.is_server and n > 1 and len(plans) > 1:
        run_on_connections(
            cdm, plans, n, setup=lambda conn: conn,
            work=lambda conn, plan, worker: worker.emit(_build_one(conn, *plan, fingerprint)),
            deliver=built.add, say=log.info, what=f"building {len(plans)} cohorts")
    for definition, statements in plans:  # all of them on DuckDB; none after a parallel build
        if definition.cohort_definition_id not in built:
            _build_one(cdm, definition, statements, fingerprint)
    ws = cdm.write_schema
    with cdm.transaction() as script:  # PostgreSQL: index + fresh statistics for the diagnostics' cohort lookups
        script.execute_all(index_and_analyze(cdm.dialect, f"{ws}.cohort", ("cohort_definition_id", "subject_id")))
    return cohort_counts(cdm, definitions)


def _build_one(cdm: CdmConnection, definition: CohortDefinition, statements: list[str], fingerprint: str) -> int:
    """Replace one cohort (rows, inclusion rules, build state) in one transaction; its id."""
    started = time.perf_counter()
    cid = definition.cohort_definition_id
    ws = cdm.write_schema
    try:
        with cdm.transaction() as script:
            script.execute_all(statements)
            script.execute(f"DELETE FROM {ws}.cohort_inclusion WHERE cohort_definition_id = {cid}")
            for seq, name in enumerate(definition.inclusion_rule_names):
                script.execute(
                    f"INSERT INTO {ws}.cohort_inclusion (cohort_definition_id, rule_sequence, name, description) "
                    f"VALUES ({cid}, {seq}, {_sql_text(name)}, NULL)"
                )
            script.execute_all(state_statements(ws, definition, fingerprint))
    except Exception as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise CohortBuildError(
            f"cohort {cid} ({definition.cohort_name}, {definition.path.name}) failed on {cdm.display_url}: {first}"
        ) from None
    log.info("built cohort %s (%s) in %.2fs", cid, definition.cohort_name, time.perf_counter() - started)
    return cid


def cohort_counts(cdm: CdmConnection, definitions: list[CohortDefinition]) -> list[CohortCount]:
    ids = ", ".join(str(d.cohort_definition_id) for d in definitions)
    df = cdm.query_df(
        f"SELECT cohort_definition_id, count(*) AS number_records, count(DISTINCT subject_id) AS number_subjects "
        f"FROM {cdm.write_schema}.cohort WHERE cohort_definition_id IN ({ids}) GROUP BY cohort_definition_id"
    )
    by_id = {int(r.cohort_definition_id): r for r in df.itertuples()}
    out = []
    for d in definitions:
        r = by_id.get(d.cohort_definition_id)
        out.append(CohortCount(
            cohort_definition_id=d.cohort_definition_id,
            cohort_name=d.cohort_name,
            number_records=int(r.number_records) if r is not None else 0,
            number_subjects=int(r.number_subjects) if r is not None else 0,
        ))
    return out
