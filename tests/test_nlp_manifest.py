"""`nlp_metastasis` as a network-study analysis: a signed manifest answered offline (run-manifest)
releases the two NLP result types; a site that has not approved breast_cancer refuses before data."""

from __future__ import annotations

import pytest

from optima_common.bundle import read_bundle, write_manifest
from optima_common.results import SummarisedResult
from site_agent.cdm.synth import generate_site
from site_agent.cli import main
from tests.factories import make_keys, make_manifest, write_site_config

pytest.importorskip("medspacy", reason="the nlp extra is not installed: pip install -e '.[nlp]'")


def test_manifest_with_nlp_metastasis(tmp_path, capsys):
    cdm = tmp_path / "site.duckdb"
    generate_site(cdm, persons=2000, site="site_a", profile="oncology", seed=4, notes=True)
    keys = make_keys(tmp_path / "keys")
    cfg = write_site_config(tmp_path, keys, cdm_url=f"duckdb:///{cdm}")
    cfg.write_text(cfg.read_text().replace('allowed_analyses = ["cohort_counts", "diagnostics"]',
                                           'allowed_analyses = ["cohort_counts", "nlp_metastasis"]'))
    m = make_manifest(keys, cohorts=("breast_cancer",), analyses=("cohort_counts", "nlp_metastasis"))
    mfile = write_manifest(m, tmp_path / "manifest.json")
    rc = main(["run-manifest", str(mfile), "--config", str(cfg), "--out", str(tmp_path / "b.bundle")])
    err = capsys.readouterr().err
    assert rc == 0, err
    res = SummarisedResult.from_csv_text(read_bundle(tmp_path / "b.bundle").results_csv)
    assert {"nlp_report_counts", "nlp_metastasis_agreement", "summarise_cohort_count"} <= set(res.settings["result_type"])
    d = res.data
    small = d["estimate_name"].str.endswith("count") & d["estimate_value"].isin([str(i) for i in range(1, 5)])
    assert not small.any()

    # a site whose catalog lacks breast_cancer refuses the analysis before opening its CDM
    import json
    import shutil

    from tests.factories import CATALOG

    defs = tmp_path / "defs"
    shutil.copytree(CATALOG.parent, defs)
    cat = json.loads((defs / "catalog.json").read_text())
    cat["cohorts"] = [c for c in cat["cohorts"] if not c["name"].startswith(("breast", "metastatic_breast"))]
    (defs / "catalog.json").write_text(json.dumps(cat))
    (tmp_path / "other").mkdir()
    cfg2 = write_site_config(tmp_path / "other", keys, cdm_url="duckdb:///does_not_exist.duckdb")
    cfg2.write_text(cfg2.read_text().replace('allowed_analyses = ["cohort_counts", "diagnostics"]',
                                             'allowed_analyses = ["cohort_counts", "nlp_metastasis"]')
                    .replace(str(CATALOG), str(defs / "catalog.json")))
    m2 = make_manifest(keys, cohorts=("lung_cancer_broad",), analyses=("cohort_counts", "nlp_metastasis"))
    mfile2 = write_manifest(m2, tmp_path / "manifest2.json")
    rc = main(["run-manifest", str(mfile2), "--config", str(cfg2), "--out", str(tmp_path / "c.bundle")])
    err = capsys.readouterr().err
    assert rc == 8 and "breast_cancer" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c.bundle").exists()
