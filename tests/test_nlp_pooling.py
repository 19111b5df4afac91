"""Coordinator pooling of the NLP agreement: pooled TP/FP/FN -> pooled precision/recall/F1 with CIs,
checked against hand sums and SciPy's Wilson interval; a withheld site count gives no pooled metric."""

from __future__ import annotations

import datetime as dt

import pytest
from scipy.stats import binomtest

from coordinator.pooling.results import network_result
from coordinator.report.nlp_section import nlp_section
from coordinator.report.sections import View
from optima_common.bundle import Provenance, ResultBundle, SuppressionRecord
from optima_common.results import SummarisedResult


def _site(name: str, n: int, cells: dict[str, tuple]) -> ResultBundle:
    recs = [dict(result_id=1, cdm_name=name, variable_name="number subjects", estimate_name="count",
                 estimate_type="integer", estimate_value=str(n))]
    for site, (tp, fp, fn) in cells.items():
        g = dict(result_id=1, cdm_name=name, group_name="metastasis_site", group_level=site)
        for est, v in (("tp_count", tp), ("fp_count", fp), ("fn_count", fn)):
            recs.append(g | dict(variable_name="agreement", estimate_name=est, estimate_type="integer",
                                 estimate_value=str(v)))
        recs.append(g | dict(variable_name="nlp positive", estimate_name="count", estimate_type="integer",
                             estimate_value="-" if "-" in (tp, fp) else str(tp + fp)))
    res = SummarisedResult.from_records(recs, [dict(result_id=1, result_type="nlp_metastasis_agreement",
                                                    package_name="optima-federated", package_version="0.1.0",
                                                    min_cell_count=5)])
    with_csv = res.to_csv_text()
    return ResultBundle(site=name, manifest_id="m1", manifest_sha256="a" * 64,
                        created_at=dt.datetime(2026, 12, 3, tzinfo=dt.UTC),
                        provenance=Provenance(cdm_name=name, package_version="0.1.0"),
                        suppression=SuppressionRecord(min_cell_count=5, site_floor=5, method="test"),
                        results_csv=with_csv)


def _pooled(net, site, est):
    d = net.result.data
    v = d[(d["cdm_name"] == "network") & (d["group_level"] == site) & (d["estimate_name"] == est)]["estimate_value"]
    return v.tolist()


def test_pooled_metrics_from_pooled_counts():
    a = _site("north", 400, {"any": (60, 8, 12), "bone": (30, "-", 6)})
    b = _site("south", 250, {"any": (25, 5, 10), "bone": (14, 5, 5)})
    net = network_result([a, b])
    tp, fp, fn = 85, 13, 22
    assert _pooled(net, "any", "tp_count") == ["85"]
    assert float(_pooled(net, "any", "precision")[0]) == pytest.approx(tp / (tp + fp), abs=1e-4)
    assert float(_pooled(net, "any", "recall")[0]) == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert float(_pooled(net, "any", "f1")[0]) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
    ci = binomtest(tp, tp + fn).proportion_ci(method="wilson")
    assert float(_pooled(net, "any", "recall_95CI_lower")[0]) == pytest.approx(ci.low, abs=1e-4)
    assert float(_pooled(net, "any", "recall_95CI_upper")[0]) == pytest.approx(ci.high, abs=1e-4)
    lo, hi = (float(_pooled(net, "any", e)[0]) for e in ("f1_95CI_lower", "f1_95CI_upper"))
    assert lo < 2 * tp / (2 * tp + fp + fn) < hi
    # bone: north withheld its FP, so the pooled FP is a lower bound and no pooled metric is given
    assert _pooled(net, "bone", "precision") == [] and any("site bone" in n for n in net.notes)
    html = nlp_section(View(net))
    assert "Agreement by metastasis site" in html and "network" in html


def test_no_agreement_no_section():
    import pandas as pd

    from coordinator.pooling.nlp import pool_agreement
    assert pool_agreement(pd.DataFrame(), pd.DataFrame(), pd.Series({1: "incidence"}), "network", []).empty
