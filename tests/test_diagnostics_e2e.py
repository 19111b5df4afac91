"""`site-agent diagnostics` end to end: the issue's acceptance, through the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from optima_common.results import validate_csv
from site_agent.diagnostics.runner import count_small_cells
from tests.conftest import DEFINITIONS, REPO

GIB = REPO / "tests" / "data" / "gi_bleed_adults.json"
EXPECTED_TYPES = {
    "summarise_omop_snapshot", "summarise_observation_period",
    "summarise_cohort_count", "summarise_cohort_attrition", "summarise_cohort_overlap", "summarise_cohort_timing",
    "summarise_characteristics", "summarise_large_scale_characteristics",
    "orphan_code_use", "unmapped_codes", "cohort_code_use",
    "incidence", "incidence_attrition", "prevalence", "prevalence_attrition",
}
CODE_USE_TYPES = {"code_use", "achilles_code_use"}


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "site_agent", *args], capture_output=True, text=True, cwd=REPO)


def check_release(csv_path, min_cell_count: int) -> set[str]:
    res = validate_csv(csv_path)
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    assert raw.shape[1] == 13
    types = set(res.settings["result_type"])
    assert EXPECTED_TYPES <= types and types & CODE_USE_TYPES, sorted(types)
    assert count_small_cells(res, min_cell_count) == 0
    assert set(res.settings["min_cell_count"]) == {str(min_cell_count)}
    return types


@pytest.mark.parametrize("target", ["eunomia", "synthetic"])
def test_diagnostics_cli_acceptance(target, tmp_path, eunomia_duckdb, synth_site):
    src, defs = (eunomia_duckdb, GIB) if target == "eunomia" else (synth_site.out, DEFINITIONS / "lung")
    cdm = tmp_path / "cdm.duckdb"
    shutil.copy(src, cdm)
    out1, out2, html = tmp_path / "r1.csv", tmp_path / "r2.csv", tmp_path / "view.html"
    p = agent("diagnostics", "--cdm", str(cdm), "--definitions", str(defs), "--out", str(out1), "--html", str(html))
    assert p.returncode == 0, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("diagnostics: ") and "0 reused" in last
    check_release(out1, 5)
    assert "<h2" in html.read_text() and "summarise_cohort_count" in html.read_text()
    p = agent("diagnostics", "--cdm", str(cdm), "--definitions", str(defs), "--out", str(out2))
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("diagnostics: 0 computed, ")
    assert out1.read_bytes() == out2.read_bytes()


def test_diagnostics_cli_postgres(pg_url, eunomia_pg_schema, tmp_path):
    out = tmp_path / "pg.csv"
    p = agent("diagnostics", "--cdm", pg_url, "--cdm-schema", eunomia_pg_schema, "--write-schema", "diag_e2e",
              "--definitions", str(GIB), "--out", str(out), "--min-cell-count", "10", "-q", "--pg-connections", "3")
    assert p.returncode == 0, p.stderr
    check_release(out, 10)
    p = agent("diagnostics", "--cdm", pg_url, "--cdm-schema", eunomia_pg_schema, "--write-schema", "diag_e2e",
              "--definitions", str(GIB), "--out", str(tmp_path / "x.csv"), "--pg-connections", "0")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--pg-connections" in p.stderr, p.stderr


def test_diagnostics_bad_out(tmp_path, eunomia_duckdb):
    p = agent("diagnostics", "--cdm", str(eunomia_duckdb), "--definitions", str(GIB),
              "--out", str(tmp_path / "no" / "such" / "dir" / "r.csv"))
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0
