"""Release history: a refreshed database cannot be subtracted from an earlier release."""

from __future__ import annotations

import pandas as pd
import pytest

from optima_common.results import SUPPRESSED, SummarisedResult
from site_agent.governance.release_history import KEY_COLUMNS, ReleaseHistory
from tests.factories import clone_persons, cohort_subjects, run_site

MIN = 5
SCLC, BROAD = 4, 1  # catalog ids


def released_counts(result: SummarisedResult) -> pd.DataFrame:
    """Numeric count cells with their result type (computed here, independently of the module)."""
    d = result.data.merge(result.settings[["result_id", "result_type"]], on="result_id")
    d = d[d["estimate_name"].str.lower().str.contains("count") & (d["estimate_value"] != SUPPRESSED)]
    d = d.assign(value=pd.to_numeric(d["estimate_value"], errors="coerce")).dropna(subset=["value"])
    return d[["result_type", *KEY_COLUMNS, "value"]].fillna({"variable_level": "NA"})


def subtraction_leaks(earlier: list[SummarisedResult], now: SummarisedResult) -> pd.DataFrame:
    keys = ["result_type", *KEY_COLUMNS]
    old = pd.concat([released_counts(r) for r in earlier])
    m = released_counts(now).merge(old, on=keys, suffixes=("", "_earlier"))
    gap = (m["value"] - m["value_earlier"]).abs()
    return m[(gap > 0) & (gap < MIN)]


def subjects(result: SummarisedResult, cohort: str) -> str:
    d = result.data.merge(result.settings[["result_id", "result_type"]], on="result_id")
    row = d[(d["result_type"] == "summarise_cohort_count") & (d["group_level"] == cohort)
            & (d["variable_name"] == "Number subjects")]
    return row["estimate_value"].iloc[0]


def test_refresh_that_adds_a_few_persons_is_blocked_then_released_once_far_enough(tmp_path):
    from site_agent.cdm.synth import generate_site

    cdm = tmp_path / "site_a.duckdb"
    generate_site(out=cdm, persons=2000, site="site_a", profile="oncology", seed=11)
    history = ReleaseHistory(tmp_path / "state")

    first = run_site(cdm)
    guarded1, report1 = history.guard(first, MIN)
    assert not report1.changed and guarded1 == first  # nothing released before
    assert history.record(guarded1, "m1") > 0
    sclc0, broad0 = len(cohort_subjects(cdm, SCLC)), len(cohort_subjects(cdm, BROAD))
    assert subjects(guarded1, "sclc") == str(sclc0) and sclc0 >= MIN

    # refresh 1: two more SCLC patients (copies of two existing ones under new ids)
    clone_persons(cdm, cohort_subjects(cdm, SCLC)[:2], 10_000_000)
    second = run_site(cdm)
    assert len(cohort_subjects(cdm, SCLC)) == sclc0 + 2 and len(cohort_subjects(cdm, BROAD)) == broad0 + 2
    assert subjects(second, "sclc") == str(sclc0 + 2)  # suppression alone lets it out...
    assert len(subtraction_leaks([guarded1], second)) > 0  # ...and 2 persons are recoverable by subtraction
    guarded2, report2 = history.guard(second, MIN)
    assert subjects(guarded2, "sclc") == SUPPRESSED and subjects(guarded2, "lung_cancer_broad") == SUPPRESSED
    blocked = {(b.result_type, b.group_level, b.variable_name, b.value, b.earlier) for b in report2.blocked}
    assert ("summarise_cohort_count", "sclc", "Number subjects", sclc0 + 2, sclc0) in blocked
    assert subtraction_leaks([guarded1], guarded2).empty
    assert report2.also_suppressed > 0  # the blocked groups took their other estimates with them
    history.record(guarded2, "m2")

    # refresh 2: four more, six away from what was released: released again, exactly
    clone_persons(cdm, cohort_subjects(cdm, SCLC)[2:6], 20_000_000)
    third = run_site(cdm)
    guarded3, _ = history.guard(third, MIN)
    assert subjects(guarded3, "sclc") == str(sclc0 + 6) == str(len(cohort_subjects(cdm, SCLC)))
    assert subtraction_leaks([guarded1, guarded2], guarded3).empty


def _sex_table(female: int, male: int) -> SummarisedResult:
    total = female + male
    rows = [dict(cdm_name="s", group_name="cohort_name", group_level="c", variable_name="Number subjects",
                 estimate_name="count", estimate_type="integer", estimate_value=str(total))]
    for sex, n in (("Female", female), ("Male", male)):
        rows += [dict(cdm_name="s", group_name="cohort_name", group_level="c", variable_name="Sex", variable_level=sex,
                      estimate_name="count", estimate_type="integer", estimate_value=str(n)),
                 dict(cdm_name="s", group_name="cohort_name", group_level="c", variable_name="Sex", variable_level=sex,
                      estimate_name="percentage", estimate_type="percentage", estimate_value=f"{100 * n / total:.2f}")]
    return SummarisedResult.from_records(rows, [dict(result_id=1, result_type="summarise_characteristics",
                                                     package_name="p", package_version="1")])


def test_guard_blocks_group_and_family_and_records_only_what_left(tmp_path):
    history = ReleaseHistory(tmp_path)
    history.record(_sex_table(50, 53), "m1")
    guarded, report = history.guard(_sex_table(52, 53), MIN)  # total 103 -> 105, Female 50 -> 52
    assert {(b.variable_name, b.variable_level) for b in report.blocked} == {("Number subjects", None),
                                                                            ("Sex", "Female")}
    # the blocked total is a group count: every estimate of the cohort is withheld, percentages included
    assert set(guarded.data["estimate_value"]) == {SUPPRESSED}
    history.record(guarded, "m2")
    assert len(history.earlier()) == 3  # nothing of m2 was released, nothing recorded
    far, report = history.guard(_sex_table(56, 53), MIN)  # 6 away from 50, 6 from 103: released as is
    assert not report.changed and far == _sex_table(56, 53)
    # min cell count below 2: no protection asked, none applied; recording twice is a no-op
    assert history.guard(_sex_table(52, 53), 1)[1].blocked == ()
    assert history.record(_sex_table(50, 53), "m1") == 0


@pytest.mark.parametrize("earlier, now, blocked", [(103, 105, True), (103, 107, True), (103, 108, False),
                                                   (103, 103, False), (103, 99, True), (103, 98, False)])
def test_guard_threshold(tmp_path, earlier, now, blocked):
    history = ReleaseHistory(tmp_path)
    history.record(_sex_table(earlier - 50, 50), "m1")
    _, report = history.guard(_sex_table(now - 50, 50), MIN)
    assert report.changed == blocked
