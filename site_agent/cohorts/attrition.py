"""Inclusion-rule attrition from the statistics Circe writes (cohort_inclusion_result).

Circe records, for every qualifying event (mode 0) and for each person's best event
(mode 1), a bit mask of the inclusion rules it passed. Applying the rules in order, the
people left after rule i are those whose mask has bits 0..i all set. A cohort without
inclusion rules gets one mask-0 row per mode at build time (site_agent.cohorts.sql), so its
first step is its real qualifying count too.
"""

from __future__ import annotations

from pydantic import BaseModel

from optima_common.errors import CohortBuildError
from site_agent.cdm.connection import CdmConnection
from site_agent.cohorts.definitions import CohortDefinition


class AttritionStep(BaseModel):
    cohort_definition_id: int
    reason_id: int
    reason: str
    number_records: int
    number_subjects: int
    excluded_records: int
    excluded_subjects: int


def cohort_attrition(cdm: CdmConnection, definition: CohortDefinition) -> list[AttritionStep]:
    cid = definition.cohort_definition_id
    ws = cdm.write_schema
    rules = definition.inclusion_rule_names
    stats = cdm.query_df(f"SELECT count(*) AS n FROM {ws}.cohort_summary_stats WHERE cohort_definition_id = {cid}")
    if int(stats["n"].iloc[0]) == 0:
        raise CohortBuildError(f"cohort {cid} ({definition.cohort_name}) has no attrition statistics on "
                               f"{cdm.display_url}", hint="rebuild it (site-agent cohorts builds every cohort given)")
    masks = cdm.query_df(
        f"SELECT inclusion_rule_mask AS mask, person_count AS n, mode_id FROM {ws}.cohort_inclusion_result "
        f"WHERE cohort_definition_id = {cid}"
    )
    def passing(mode: int, n_rules: int) -> int:
        need = (1 << n_rules) - 1
        sel = masks[(masks["mode_id"] == mode) & ((masks["mask"].astype("int64") & need) == need)]
        return int(sel["n"].sum())

    steps: list[tuple[str, int, int]] = [("Qualifying initial records", passing(0, 0), passing(1, 0))]
    for i, name in enumerate(rules):
        steps.append((name, passing(0, i + 1), passing(1, i + 1)))
    final = cdm.query_df(
        f"SELECT count(*) AS r, count(DISTINCT subject_id) AS s FROM {ws}.cohort WHERE cohort_definition_id = {cid}"
    ).iloc[0]
    steps.append(("Final cohort (limits and era collapse applied)", int(final["r"]), int(final["s"])))
    out: list[AttritionStep] = []
    prev_r, prev_s = steps[0][1], steps[0][2]
    for i, (reason, r, s) in enumerate(steps):
        out.append(AttritionStep(cohort_definition_id=cid, reason_id=i + 1, reason=reason, number_records=r,
                                 number_subjects=s, excluded_records=prev_r - r, excluded_subjects=prev_s - s))
        prev_r, prev_s = r, s
    return out
