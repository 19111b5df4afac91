"""Cohort count / attrition / overlap / timing (CohortCharacteristics layouts) against
independent pandas computations over the cohort table's rows.

Eunomia (DuckDB and PostgreSQL): the GI bleed cohort plus a hand-inserted cohort (several
entries per subject, so that "first entry" matters) and rows of an unrelated cohort id that
must be ignored. Synthetic oncology site (DuckDB): the lung cohorts.
Quantiles are numpy ``method="linear"`` (R type 7 = ``quantile_cont``/``percentile_cont``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from optima_common.results import SummarisedResult
from site_agent.cdm import connect_cdm
from site_agent.cohorts import build_cohorts, cohort_attrition, collect_definitions
from site_agent.cohorts.definitions import CohortDefinition
from site_agent.diagnostics import cohort_summary as cs
from site_agent.diagnostics.base import DiagnosticContext
from tests.conftest import DEFINITIONS, REPO

GI_BLEED = REPO / "tests" / "data" / "gi_bleed_adults.json"
SINUSITIS_ID, NOISE_ID = 901, 902


def _fake_definition(cid: int, name: str) -> CohortDefinition:
    return CohortDefinition(cohort_definition_id=cid, cohort_name=name, path=GI_BLEED, sha256="0" * 64,
                            json_text="{}")


def _get(res: SummarisedResult, **keys) -> pd.DataFrame:
    d = res.data
    for k, v in keys.items():
        d = d[d[k] == v]
    return d


def _value(res: SummarisedResult, **keys) -> str:
    d = _get(res, **keys)
    assert len(d) == 1, f"expected one row for {keys}, got {len(d)}"
    return d.iloc[0]["estimate_value"]


def _rows(cdm, cid: int) -> pd.DataFrame:
    df = cdm.query_df(f"SELECT subject_id, cohort_start_date FROM {cdm.write_schema}.cohort "
                      f"WHERE cohort_definition_id = {cid}")
    df["cohort_start_date"] = pd.to_datetime(df["cohort_start_date"])
    return df


def _check_overlap(res: SummarisedResult, cdm, ref: CohortDefinition, comp: CohortDefinition) -> None:
    a = set(_rows(cdm, ref.cohort_definition_id)["subject_id"])
    b = set(_rows(cdm, comp.cohort_definition_id)["subject_id"])
    union = len(a | b)
    assert list(res.settings["result_type"]) == ["summarise_cohort_overlap"]
    assert res.settings.iloc[0]["overlap_by"] == "subject_id"
    for r, c, x, y in ((ref, comp, a, b), (comp, ref, b, a)):
        level = f"{r.cohort_name} &&& {c.cohort_name}"
        want = {"Only in reference cohort": len(x - y), "In both cohorts": len(x & y),
                "Only in comparator cohort": len(y - x)}
        for var, n in want.items():
            keys = dict(group_name="cohort_name_reference &&& cohort_name_comparator", group_level=level,
                        variable_name=var, variable_level="Subjects")
            assert _value(res, estimate_name="count", **keys) == str(n), (level, var)
            assert float(_value(res, estimate_name="percentage", **keys)) == pytest.approx(100 * n / union)
    assert len(res.data) == 12


def _check_timing(res: SummarisedResult, cdm, ref: CohortDefinition, comp: CohortDefinition) -> int:
    first_r = _rows(cdm, ref.cohort_definition_id).groupby("subject_id")["cohort_start_date"].min()
    first_c = _rows(cdm, comp.cohort_definition_id).groupby("subject_id")["cohort_start_date"].min()
    both = pd.concat([first_r.rename("r"), first_c.rename("c")], axis=1, join="inner")
    diff = (both["c"] - both["r"]).dt.days.to_numpy(dtype=float)
    assert res.settings.iloc[0]["restrict_to_first_entry"] == "TRUE"
    for r, c, x in ((ref, comp, diff), (comp, ref, -diff)):
        level = f"{r.cohort_name} &&& {c.cohort_name}"
        assert _value(res, group_level=level, variable_name="number subjects") == str(len(x))
        assert _value(res, group_level=level, variable_name="number records") == str(len(x))
        dist = _get(res, group_level=level, variable_name="days_between_cohort_entries")
        if len(x) == 0:
            assert dist.empty
            continue
        want = {"min": x.min(), "max": x.max(), "q25": np.percentile(x, 25, method="linear"),
                "median": np.percentile(x, 50, method="linear"), "q75": np.percentile(x, 75, method="linear")}
        assert set(dist["estimate_name"]) == set(want)
        for est, w in want.items():
            assert float(_value(res, group_level=level, variable_name="days_between_cohort_entries",
                                estimate_name=est)) == pytest.approx(w, abs=1e-9), (level, est)
    return len(diff)


def test_registered():
    by = {d.name: d for d in cs.DIAGNOSTICS}
    assert {n: (d.scope, d.result_types) for n, d in by.items()} == {
        "cohort_count": ("cohort", ("summarise_cohort_count",)),
        "cohort_attrition": ("cohort", ("summarise_cohort_attrition",)),
        "cohort_overlap": ("pair", ("summarise_cohort_overlap",)),
        "cohort_timing": ("pair", ("summarise_cohort_timing",)),
    }


def test_eunomia_all_four(eunomia_cdm):
    url, schema, write = eunomia_cdm
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        defs = collect_definitions([GI_BLEED])
        build_cohorts(cdm, defs)
        gib = defs[0]
        sinus = _fake_definition(SINUSITIS_ID, "sinusitis_any")
        with cdm.transaction() as script:
            script.execute(f"DELETE FROM {write}.cohort WHERE cohort_definition_id IN ({SINUSITIS_ID}, {NOISE_ID})")
            # every sinusitis record: several entries per subject
            script.execute(
                f"INSERT INTO {write}.cohort (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date) "
                f"SELECT DISTINCT {SINUSITIS_ID}, person_id, condition_start_date, condition_start_date "
                f"FROM {schema}.condition_occurrence WHERE condition_concept_id IN (40481087, 4112343)")
            # another cohort's rows on the same subjects, which every diagnostic must ignore
            script.execute(
                f"INSERT INTO {write}.cohort (cohort_definition_id, subject_id, cohort_start_date, cohort_end_date) "
                f"SELECT {NOISE_ID}, person_id, DATE '1900-01-01', DATE '1900-01-01' FROM {schema}.person")
        ctx = DiagnosticContext(cdm=cdm, cdm_name="eunomia", cohorts=(gib, sinus))

        count = cs.summarise_cohort_count(ctx, (gib,))
        rows = _rows(cdm, gib.cohort_definition_id)
        assert _value(count, variable_name="Number records") == str(len(rows))
        assert _value(count, variable_name="Number subjects") == str(rows["subject_id"].nunique())
        assert set(count.data["group_level"]) == {gib.cohort_name}
        assert count.settings.iloc[0]["table_name"] == "cohort"
        sin_count = cs.summarise_cohort_count(ctx, (sinus,))
        sin_rows = _rows(cdm, SINUSITIS_ID)
        assert len(sin_rows) > sin_rows["subject_id"].nunique()  # several entries per subject
        assert _value(sin_count, variable_name="Number records") == str(len(sin_rows))

        att = cs.summarise_cohort_attrition(ctx, (gib,))
        steps = cohort_attrition(cdm, gib)
        assert att.settings.iloc[0]["cohort_definition_id"] == str(gib.cohort_definition_id)
        assert len(att.data) == 4 * len(steps)
        for step in steps:
            for var in ("number_records", "number_subjects", "excluded_records", "excluded_subjects"):
                got = _value(att, strata_name="reason", strata_level=step.reason, additional_name="reason_id",
                             additional_level=str(step.reason_id), variable_name=var)
                assert got == str(getattr(step, var))
        final = _get(att, additional_level=str(steps[-1].reason_id), variable_name="number_subjects")
        assert final.iloc[0]["estimate_value"] == str(rows["subject_id"].nunique())

        overlap = cs.summarise_cohort_overlap(ctx, (gib, sinus))
        _check_overlap(overlap, cdm, gib, sinus)
        timing = cs.summarise_cohort_timing(ctx, (gib, sinus))
        assert _check_timing(timing, cdm, gib, sinus) > 10


@pytest.fixture(scope="module")
def lung_site(tmp_path_factory, synth_site):
    path = tmp_path_factory.mktemp("diag_lung") / "site.duckdb"
    shutil.copy(synth_site.out, path)
    defs = collect_definitions([DEFINITIONS / "lung"])
    with connect_cdm(str(path), write_schema="results") as cdm:
        build_cohorts(cdm, defs)
        yield cdm, {d.cohort_name: d for d in defs}


@pytest.mark.parametrize("pair", [("nsclc", "sclc"), ("lung_cancer_broad", "lung_cancer_narrow"),
                                  ("sclc", "disease_progression")])
def test_synthetic_overlap(lung_site, pair):
    cdm, by = lung_site
    ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=tuple(by.values()))
    res = cs.summarise_cohort_overlap(ctx, (by[pair[0]], by[pair[1]]))
    _check_overlap(res, cdm, by[pair[0]], by[pair[1]])


def test_synthetic_overlap_narrow_inside_broad(lung_site):
    cdm, by = lung_site
    ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=tuple(by.values()))
    res = cs.summarise_cohort_overlap(ctx, (by["lung_cancer_broad"], by["lung_cancer_narrow"]))
    level = "lung_cancer_narrow &&& lung_cancer_broad"
    assert _value(res, group_level=level, variable_name="Only in reference cohort", estimate_name="count") == "0"


@pytest.mark.parametrize("pair", [("sclc", "disease_progression"), ("nsclc", "sclc"),
                                  ("lung_cancer_broad", "lung_chemotherapy")])
def test_synthetic_timing(lung_site, pair):
    cdm, by = lung_site
    ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=tuple(by.values()))
    res = cs.summarise_cohort_timing(ctx, (by[pair[0]], by[pair[1]]))
    n = _check_timing(res, cdm, by[pair[0]], by[pair[1]])
    if pair == ("nsclc", "sclc"):
        assert n == 0 and list(res.settings["result_type"]) == ["summarise_cohort_timing"]
    else:
        assert n > 50


def test_empty_cohort_count(lung_site):
    cdm, by = lung_site
    ghost = _fake_definition(777, "ghost")
    ctx = DiagnosticContext(cdm=cdm, cdm_name="site_a", cohorts=(ghost,))
    res = cs.summarise_cohort_count(ctx, (ghost,))
    assert set(res.data["estimate_value"]) == {"0"} and len(res.data) == 2
