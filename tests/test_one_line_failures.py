"""Public commands that fail must fail in one clear line, with a non-zero exit and nothing
half-written (issue: every released number agrees with an independent reference)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import DEFINITIONS, REPO

SPEC = DEFINITIONS / "studies" / "sclc_stage_i_ii.json"


def run(*args: str, module: str = "site_agent", env: dict | None = None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=300)


def one_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "unexpected error" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_cdm(tmp_path_factory) -> Path:
    from site_agent.cdm.synth import generate_site

    out = tmp_path_factory.mktemp("small") / "site.duckdb"
    generate_site(out=out, persons=1000, site="small", profile="oncology", seed=5)
    return out


@pytest.mark.parametrize("damage", ["drop_measurement", "not_omop"])
def test_run_study_on_a_cdm_that_is_not_omop(damage, small_cdm, tmp_path):
    cdm = tmp_path / "cdm.duckdb"
    if damage == "not_omop":
        con = duckdb.connect(str(cdm))
        con.execute("CREATE TABLE foo (a INTEGER)")
    else:
        cdm.write_bytes(small_cdm.read_bytes())
        con = duckdb.connect(str(cdm))
        con.execute("DROP TABLE main.measurement")
    con.close()
    out = tmp_path / "out"
    proc = run("run-study", str(SPEC), "--cdm", str(cdm), "--out", str(out))
    line = one_line(proc)
    assert proc.returncode == 4 and "is missing main." in line, line  # CDM validation
    assert "measurement" in line
    assert not out.exists()


def test_deeply_nested_definition(tmp_path, small_cdm):
    doc = json.loads((DEFINITIONS / "lung" / "sclc.json").read_text())
    group = {"Type": "ALL", "CriteriaList": [], "DemographicCriteriaList": [], "Groups": []}
    for _ in range(3000):
        group = {"Type": "ALL", "CriteriaList": [], "DemographicCriteriaList": [], "Groups": [group]}
    doc["InclusionRules"] = [{"name": "deep", "expression": group}]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(doc))
    proc = run("cohorts", "--cdm", str(small_cdm), "--definitions", str(path))
    line = one_line(proc)
    assert proc.returncode == 5 and "nested" in line and "deep.json" in line, line


def test_study_send_without_a_reachable_superlink(tmp_path):
    from optima_common.keys import generate_keypair

    key, _ = generate_keypair(tmp_path / "keys", "coordinator")
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "optima"\n\n[superlink.optima]\n'
                                      'address = "127.0.0.1:9"\ninsecure = true\n')
    proc = run("study", "send", str(SPEC), "--sites", "site_a", "--key", str(key), "--out", str(tmp_path / "out"),
               "--trust", str(tmp_path / "trust"), "--store", str(tmp_path / "store.sqlite3"), "--timeout", "5",
               module="coordinator.cli", env={"FLWR_HOME": str(home)})
    line = one_line(proc)
    assert "Connection to the SuperLink is unavailable" in line, line
    assert not any(ch in line for ch in "\u2502\u256d\u2570\u2500"), line  # no box-drawing fragments


def test_site_toml_refuses_an_unknown_analysis_name(tmp_path):
    from optima_common.protocol import ANALYSES
    from site_agent import study_exec

    assert tuple(study_exec.ANALYSES) == tuple(ANALYSES)  # what a site may allow is what it can run
    from tests.federation_sites import SITES, build_network

    net = build_network(tmp_path / "net", SITES[:1])
    text = net.configs["site_north"].read_text()
    import re

    line = re.search(r"^allowed_analyses\s*=.*$", text, flags=re.MULTILINE)
    new = 'allowed_analyses = ["cohort_counts", "sclc_studdy"]'
    bad = net.configs["site_north"].with_name("site_bad.toml")
    bad.write_text(text.replace(line.group(0), new) if line else text.replace("[cdm]", new + "\n\n[cdm]", 1))
    proc = run("release", "some-manifest", "--config", str(bad), "--out", str(tmp_path / "x.bundle"))
    out = one_line(proc)
    assert proc.returncode == 2 and "sclc_studdy" in out and "known: cohort_counts" in out, out
    assert not (tmp_path / "x.bundle").exists()
