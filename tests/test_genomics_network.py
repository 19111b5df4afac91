"""Genomics across sites (pooled mutation frequencies) and clinical data read from an OMOP CDM."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from coordinator.pooling.results import network_result
from optima_common.bundle import Provenance, ResultBundle, SuppressionRecord
from site_agent.genomics.profile import run_profile
from site_agent.genomics.synth import generate
from site_agent.study_exec import result_csv_text


def _site(root, name, n, seed):
    generate(root / name, n, seed=seed)
    run = run_profile([root / name / "mutations.maf"], root / name / "expression.tsv", root / name / "linkage.csv",
                      clinical=root / name / "clinical.csv", cdm_name=name)
    b = ResultBundle(site=name, manifest_id="m1", manifest_sha256="a" * 64, created_at=dt.datetime.now(dt.UTC),
                     provenance=Provenance(cdm_name=name, package_version="0.1.0"),
                     suppression=SuppressionRecord(min_cell_count=5, site_floor=5, method="test"),
                     results_csv=result_csv_text(run.result))
    return b, run


def test_network_pools_mutation_frequencies_with_random_effects(tmp_path):
    sites = [_site(tmp_path, "north", 300, 1), _site(tmp_path, "south", 400, 2), _site(tmp_path, "east", 250, 3)]
    net = network_result([b for b, _ in sites])
    d = net.result.data
    pooled = d[(d["cdm_name"] == "network") & (d["variable_level"] == "TP53")]
    est = dict(zip(pooled["estimate_name"], pooled["estimate_value"]))
    # textbook DerSimonian-Laird on the logit proportions, written out here
    x, n = [], []
    for _, run in sites:
        r = run.result.data
        x.append(float(r[(r["variable_level"] == "TP53") & (r["estimate_name"] == "count")
                         & (r["result_id"] == 1)]["estimate_value"].iat[0]))
        n.append(float(r[(r["variable_name"] == "number subjects") & (r["result_id"] == 1)]["estimate_value"].iat[0]))
    x, n = np.array(x), np.array(n)
    y, v = np.log(x / (n - x)), 1 / x + 1 / (n - x)
    w = 1 / v
    q = (w * (y - (w * y).sum() / w.sum()) ** 2).sum()
    tau2 = max(0.0, (q - 2) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    mu = (ws * y).sum() / ws.sum()
    se = ws.sum() ** -0.5
    assert float(est["random_effects_percentage"]) == pytest.approx(100 / (1 + np.exp(-mu)), rel=1e-6)
    assert float(est["random_effects_95CI_lower"]) == pytest.approx(100 / (1 + np.exp(-(mu - 1.959964 * se))), rel=1e-5)
    assert float(est["tau_squared"]) == pytest.approx(tau2, abs=1e-9)
    assert int(est["meta_sites"]) == 3
    assert int(est["count"]) == int(x.sum())  # the generic pooling sums the released counts
    assert 25 < float(est["random_effects_percentage"]) < 42
    from coordinator.report.genomics import genomics_section
    from coordinator.report.sections import View

    html = genomics_section(View(net))
    assert "<h2>Genomics</h2>" in html and f"<td>{float(est['random_effects_percentage']):.1f}</td>" in html
    assert "PIK3CA H1047R" in html and "LumA" in html
