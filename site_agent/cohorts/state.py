"""Which definition (sha256) each cohort id was last built from, and on which CDM.

Kept in ``<write_schema>.optima_cohort_state`` and written in the same transaction as
the cohort itself, so the state can never claim a build that did not commit. The
diagnostics runner rebuilds only cohorts whose definition or CDM fingerprint changed.
"""

from __future__ import annotations

from site_agent.cdm.connection import CdmConnection
from site_agent.cohorts.definitions import CohortDefinition

STATE_TABLE = "optima_cohort_state"  # created with the results tables (site_agent.cdm.ddl)


def state_statements(write_schema: str, definition: CohortDefinition, fingerprint: str) -> list[str]:
    cid = definition.cohort_definition_id
    return [
        f"DELETE FROM {write_schema}.{STATE_TABLE} WHERE cohort_definition_id = {cid}",
        f"INSERT INTO {write_schema}.{STATE_TABLE} VALUES ({cid}, '{definition.sha256}', '{fingerprint}')",
    ]


def stale_cohorts(cdm: CdmConnection, definitions: list[CohortDefinition], fingerprint: str) -> list[CohortDefinition]:
    df = cdm.query_df(f"SELECT cohort_definition_id, definition_sha256, cdm_fingerprint "
                      f"FROM {cdm.write_schema}.{STATE_TABLE}")
    built = {int(r.cohort_definition_id): (r.definition_sha256, r.cdm_fingerprint) for r in df.itertuples()}
    # a build without attrition statistics (a cohort without inclusion rules built before they were
    # recorded for it) is rebuilt too, or its attrition would start from nothing
    with_stats = set(cdm.query_df(f"SELECT DISTINCT cohort_definition_id FROM {cdm.write_schema}.cohort_summary_stats "
                                  f"WHERE mode_id = 0")["cohort_definition_id"].astype(int))
    return [d for d in definitions if built.get(d.cohort_definition_id) != (d.sha256, fingerprint)
            or d.cohort_definition_id not in with_stats]
