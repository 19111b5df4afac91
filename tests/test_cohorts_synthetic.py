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
    assert [s.reason for s in steps[1:4]] == ["Age >= 18", "No history of cancer except skin cancer",
                                             "Stage I or II recorded"]
    assert [s.number_subjects for s in steps[:4]] == [a["subjects"] for a in synth_site.truth_attrition]
    assert steps[-1].number_subjects == synth_site.truth["sclc_stage_i_ii"]["subjects"]


def test_cli_synth_and_cohorts_json(tmp_path, pg_url):
    """The user's path: generate with the CLI, copy to PostgreSQL, build the lung folder on both."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "site_agent", *a], capture_output=True, text=True,  # noqa: E731
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
