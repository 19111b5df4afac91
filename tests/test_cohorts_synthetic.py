"""The network's cohort definitions on a synthetic site, checked against the generator's
ground truth (computed from its own records, without any cohort engine), on DuckDB and on
PostgreSQL, through the library and through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from site_agent.cdm import connect_cdm
from site_agent.cohorts import build_cohorts, cohort_attrition, collect_definitions
from tests.conftest import DEFINITIONS, REPO


@pytest.fixture(params=["duckdb", "postgresql"])
def synth_cdm(request, synth_site, tmp_path):
    if request.param == "duckdb":
        path = tmp_path / "site.duckdb"
        shutil.copy(synth_site.out, path)
        return str(path), None
    request.getfixturevalue("synth_pg_schema")
    return request.getfixturevalue("pg_url"), "synth_cdm"


def test_every_cohort_matches_ground_truth(synth_cdm, synth_site):
    url, schema = synth_cdm
    defs = collect_definitions([DEFINITIONS])
    assert [d.cohort_definition_id for d in defs] == list(range(1, 13))
    with connect_cdm(url, cdm_schema=schema, write_schema="results") as cdm:
        counts = build_cohorts(cdm, defs)
        got = {c.cohort_name: {"records": c.number_records, "subjects": c.number_subjects} for c in counts}
        assert got == synth_site.truth
        stage = next(d for d in defs if d.cohort_name == "sclc_stage_i_ii")
        steps = cohort_attrition(cdm, stage)
        chemo_def = next(d for d in defs if d.cohort_name == "lung_chemotherapy")
        chemo_sql = _qualifying_drug_exposures_sql(cdm.cdm_schema, chemo_def)
        chemo_reference = cdm.query_df(chemo_sql).iloc[0]
        attrition = {d.cohort_name: cohort_attrition(cdm, d) for d in defs}
    _check_attrition(attrition, synth_site.truth)
    chemo = attrition["lung_chemotherapy"][0]
    assert (chemo.number_records, chemo.number_subjects) == (int(chemo_reference["r"]), int(chemo_reference["s"]))
    assert [s.reason for s in steps[1:4]] == ["Age >= 18", "No history of cancer except skin cancer",
                                             "Stage I or II recorded"]
    assert [s.number_subjects for s in steps[:4]] == [a["subjects"] for a in synth_site.truth_attrition]
    assert steps[-1].number_subjects == synth_site.truth["sclc_stage_i_ii"]["subjects"]


def _qualifying_drug_exposures_sql(schema: str, definition) -> str:
    """Plain SQL, no cohort engine: drug exposures of the definition's concept set (with
    descendants) that start inside an observation period - its qualifying initial events."""
    items = json.loads(definition.json_text)["ConceptSets"][0]["expression"]["items"]
    assert all(i.get("includeDescendants") and not i.get("isExcluded") for i in items)
    ids = ", ".join(str(i["concept"]["CONCEPT_ID"]) for i in items)
    return (f"SELECT count(*) AS r, count(DISTINCT de.person_id) AS s FROM {schema}.drug_exposure de "
            f"WHERE de.drug_concept_id IN (SELECT descendant_concept_id FROM {schema}.concept_ancestor "
            f"WHERE ancestor_concept_id IN ({ids})) AND EXISTS (SELECT 1 FROM {schema}.observation_period op "
            f"WHERE op.person_id = de.person_id AND de.drug_exposure_start_date BETWEEN "
            f"op.observation_period_start_date AND op.observation_period_end_date)")


def _check_attrition(attrition: dict, truth: dict) -> None:
    """Every cohort: no negative count, counts never grow along the steps, the last step is the
    cohort; cohorts without inclusion rules start from their ground-truth subjects."""
    for name, steps in attrition.items():
        for s in steps:
            assert min(s.number_records, s.number_subjects, s.excluded_records, s.excluded_subjects) >= 0, (name, s)
        assert steps[0].number_subjects > 0 or truth[name]["subjects"] == 0, name
        assert all(b.number_subjects <= a.number_subjects for a, b in zip(steps, steps[1:])), name
        assert (steps[-1].number_records, steps[-1].number_subjects) == (truth[name]["records"],
                                                                         truth[name]["subjects"]), name
        if len(steps) == 2:  # no inclusion rules: every qualifying person stays
            assert steps[0].number_subjects == truth[name]["subjects"], name
            assert steps[0].number_records >= truth[name]["records"], name


def test_cli_synth_and_cohorts_json(tmp_path, pg_url):
    """The user's path: generate with the CLI, copy to PostgreSQL, build the lung folder on both."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "site_agent", *a], capture_output=True, text=True,
                                    cwd=REPO)
    out = tmp_path / "cli_site.duckdb"
    truth = tmp_path / "truth.json"
    p = run("cdm", "synth", "--out", str(out), "--persons", "3000", "--site", "cli_site",
            "--profile", "oncology", "--seed", "3", "--truth", str(truth))
    assert p.returncode == 0, p.stderr
    expected = json.loads(truth.read_text())["truth"]
    p = run("cdm", "copy", str(out), "--to", pg_url, "--schema", "cli_cdm")
    assert p.returncode == 0, p.stderr
    for args in (["--cdm", str(out)], ["--cdm", pg_url, "--cdm-schema", "cli_cdm", "--write-schema", "cli_results"]):
        p = run("cdm", "check", *args)
        assert p.returncode == 0 and "persons                3000" in p.stdout, p.stdout + p.stderr
        p = run("cohorts", *args, "--definitions", str(DEFINITIONS / "lung"), "--json")
        assert p.returncode == 0, p.stderr
        rows = json.loads(p.stdout)
        assert [r["cohort_definition_id"] for r in rows] == list(range(1, 11))
        for r in rows:
            assert {"records": r["number_records"], "subjects": r["number_subjects"]} == expected[r["cohort_name"]]
    p = run("cohorts", "--cdm", str(out), "--definitions", str(DEFINITIONS / "lung"), "--json", "--attrition",
            "--min-cell-count", "5")
    assert p.returncode == 0, p.stderr
    for r in json.loads(p.stdout):
        steps = r["attrition"]
        assert steps[-1]["reason"].startswith("Final cohort") and len(steps) >= 2
        shown = [v for s in steps for k, v in s.items() if k.startswith(("number_", "excluded_"))]
        assert all(v is None or v == 0 or v >= 5 for v in shown), r  # small counts blanked
        if r["number_subjects"] is not None:
            assert steps[-1]["number_subjects"] == r["number_subjects"]


@pytest.mark.slow
def test_acceptance_oncology_200k(tmp_path):
    """Issue acceptance: broad >= narrow >= SCLC >= stage I-II > 0 on 200,000 persons, with
    each inclusion rule of the stage I-II cohort in the attrition, all equal to ground truth."""
    from site_agent.cdm.synth import generate_site

    res = generate_site(out=tmp_path / "onc.duckdb", persons=200_000, site="site_a", profile="oncology", seed=1)
    defs = collect_definitions([DEFINITIONS / "lung"])
    with connect_cdm(str(res.out)) as cdm:
        counts = {c.cohort_name: c.number_subjects for c in build_cohorts(cdm, defs)}
        steps = cohort_attrition(cdm, next(d for d in defs if d.cohort_name == "sclc_stage_i_ii"))
    assert counts["lung_cancer_broad"] >= counts["lung_cancer_narrow"] >= counts["sclc"] >= counts["sclc_stage_i_ii"] > 0
    assert all(counts[k] == res.truth[k]["subjects"] for k in counts)
    excluded = {s.reason: s.excluded_subjects for s in steps}
    assert all(excluded[r] > 0 for r in ("Age >= 18", "No history of cancer except skin cancer",
                                         "Stage I or II recorded"))


def test_build_without_attrition_statistics_is_stale(synth_site, tmp_path):
    """A rule-less cohort built before its qualifying counts were recorded: rebuilt when stale
    cohorts are looked up, and its attrition refuses to start from nothing."""
    from optima_common.errors import CohortBuildError
    from site_agent.cdm.fingerprint import cdm_fingerprint
    from site_agent.cohorts.state import stale_cohorts

    path = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, path)
    sclc = next(d for d in collect_definitions([DEFINITIONS / "lung"]) if d.cohort_name == "sclc")
    with connect_cdm(str(path)) as cdm:
        build_cohorts(cdm, [sclc])
        assert stale_cohorts(cdm, [sclc], cdm_fingerprint(cdm)) == []
        first = cohort_attrition(cdm, sclc)[0]
        assert first.number_subjects == synth_site.truth["sclc"]["subjects"]
        with cdm.transaction() as script:  # what a build by the earlier code left behind
            script.execute(f"DELETE FROM results.cohort_summary_stats WHERE cohort_definition_id = "
                           f"{sclc.cohort_definition_id}")
            script.execute(f"DELETE FROM results.cohort_inclusion_result WHERE cohort_definition_id = "
                           f"{sclc.cohort_definition_id}")
        assert stale_cohorts(cdm, [sclc], cdm_fingerprint(cdm)) == [sclc]
        with pytest.raises(CohortBuildError, match="no attrition statistics"):
            cohort_attrition(cdm, sclc)
