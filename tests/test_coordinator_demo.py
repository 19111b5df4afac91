"""The main job: a three-site synthetic network building the lung cohorts, via the CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_demo_network_counts_suppressed(tmp_path):
    out = tmp_path / "net"
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--out", str(out), "--persons", "1500"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "cohort_counts.json").read_text())
    assert sorted(results) == ["oncology_east", "oncology_north", "primary_care_south"]
    for site, rows in results.items():
        assert [r["cohort_name"] for r in rows][:5] == ["lung_cancer_broad", "lung_cancer_narrow", "nsclc", "sclc",
                                                       "sclc_stage_i_ii"]
        for r in rows:
            for key in ("number_records", "number_subjects"):
                assert r[key] is None or r[key] == 0 or r[key] >= 5, (site, r)
        assert f"== {site}" in proc.stdout
    # at this size some site has a cohort of 1..4 persons: it must arrive suppressed
    assert any(r["number_subjects"] is None for rows in results.values() for r in rows)
    assert "<5" in proc.stdout
    # the same site generated again gives the same counts: the demo is reproducible
    again = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--out", str(tmp_path / "net2"),
                            "--persons", "1500"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "net2" / "cohort_counts.json").read_text()) == results


def test_demo_reports_missing_definitions(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--out", str(tmp_path),
                           "--definitions", str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
