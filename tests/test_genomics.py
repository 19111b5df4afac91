"""Genomics profiling: generator truth, SciPy references, the published PAM50 centroids, a real MAF."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from optima_common.disclosure import check_release
from site_agent.genomics import immune, readers, reference, stats, subtype
from site_agent.genomics.profile import run_profile, write_outputs
from site_agent.genomics.synth import generate

DATA = Path(__file__).parent / "data" / "genomics"
MIN = 5


def _rows(result, rt):
    ids = result.settings.loc[result.settings["result_type"] == rt, "result_id"]
    return result.data[result.data["result_id"].isin(ids)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("genomics")
    generate(root / "site", 500, seed=11)
    run = run_profile([root / "site" / "mutations.maf"], root / "site" / "expression.tsv", root / "site" / "linkage.csv",
                      clinical=root / "site" / "clinical.csv", cdm_name="synthetic")
    truth = json.loads((root / "site" / "truth.json").read_text())
    return root, run, truth


def test_released_frequencies_equal_the_generator_truth(site):
    _, run, truth = site
    mf = _rows(run.result, "mutation_frequency")
    counts = mf[(mf["estimate_name"] == "count") & (mf["variable_name"] == "gene")]
    assert len(counts) == 30
    released = counts[counts["estimate_value"] != "-"]
    assert len(released) >= 25
    for g, v in zip(released["variable_level"], released["estimate_value"]):
        assert int(v) == truth["gene_patients"][g], g
    pct = mf[(mf["estimate_name"] == "percentage") & (mf["variable_level"] == "TP53")]["estimate_value"].iat[0]
    assert float(pct) == pytest.approx(100 * truth["gene_patients"]["TP53"] / 500, abs=1e-3)
    assert 25 <= float(pct) <= 42  # TCGA-BRCA: about a third


def test_hotspot_counts_by_er_and_her2_equal_the_truth(site):
    _, run, truth = site
    h = _rows(run.result, "hotspot_counts")
    h = h[(h["variable_name"] == "hotspot") & (h["estimate_name"] == "count")]
    checked = 0
    for hs, t in truth["hotspots"].items():
        for sn in ("overall", "er_status", "her2_status"):
            levels = ["overall"] if sn == "overall" else ["positive", "negative", "unknown"]
            keys = ["overall"] if sn == "overall" else [f"{sn.split('_')[0]}_{lv}" for lv in levels]
            withheld_large = False
            for lv, key in zip(levels, keys):
                v = h[(h["variable_level"] == hs) & (h["strata_name"] == sn) & (h["strata_level"] == lv)]["estimate_value"]
                assert len(v) == 1
                if v.iat[0] != "-":
                    assert int(v.iat[0]) == t[key], (hs, key)
                    checked += 1
                elif t[key] >= MIN:
                    withheld_large = True
            if withheld_large:  # only withheld to protect a small neighbour (the levels add up to overall)
                assert any(0 < t[k] < MIN for k in keys), (hs, sn)
    assert checked >= 6  # the three overall rows and the large strata
    assert truth["hotspots"]["PIK3CA H1047R"]["overall"] > truth["hotspots"]["PIK3CA E542K"]["overall"]


def test_subtype_calls_and_scores_follow_the_truth(site):
    root, run, truth = site
    ex = readers.read_expression(root / "site" / "expression.tsv")
    link = readers.read_linkage(root / "site" / "linkage.csv")
    pid = readers.link(pd.Series(ex.values.columns, index=ex.values.columns), link)
    vals = ex.values.set_axis(pid.astype("int64").to_numpy(), axis=1)
    calls, missing = subtype.pam50(vals)
    assert missing == []
    true = pd.Series({int(k): v for k, v in truth["subtype"].items()}).reindex(calls.index)
    agreement = (calls == true).mean()
    assert agreement >= 0.85, agreement
    sc, _ = immune.scores(vals)
    latent = pd.Series({int(k): v for k, v in truth["immune"].items()}).reindex(sc.index)
    assert sps.spearmanr(sc["immune"], latent).statistic > 0.8
    stromal = pd.Series({int(k): v for k, v in truth["stromal"].items()}).reindex(sc.index)
    assert sps.spearmanr(sc["stromal"], stromal).statistic > 0.7  # immune genes move ranks too
    # released medians: basal and HER2-enriched above the luminal subtypes
    im = _rows(run.result, "immune_infiltration")
    med = im[(im["group_level"] == "immune") & (im["estimate_name"] == "median") & (im["strata_name"] == "subtype")]
    m = dict(zip(med["strata_level"], pd.to_numeric(med["estimate_value"])))
    assert min(m["Basal"], m["Her2"]) > max(m["LumA"], m["LumB"])
    # the released Kruskal-Wallis equals SciPy's on the same scores
    groups = [sc.loc[calls.index[calls == s], "immune"].to_numpy() for s in reference.SUBTYPES if (calls == s).any()]
    kw = im[(im["group_level"] == "immune") & (im["variable_name"] == "kruskal_wallis")]
    h = float(kw.loc[kw["estimate_name"] == "statistic", "estimate_value"].iat[0])
    assert h == pytest.approx(sps.kruskal(*groups).statistic, rel=1e-4)


def test_pam50_assigns_each_published_centroid_to_its_own_subtype():
    cent = reference.pam50_centroids()
    calls, missing = subtype.pam50(cent, center=False)
    assert missing == [] and len(cent) == 50
    assert list(calls) == list(cent.columns)


def test_fisher_and_kruskal_match_scipy():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b, c, d = (int(x) for x in rng.integers(0, 40, size=4))
        odds, p = stats.fisher_exact(a, b, c, d)
        ref = sps.fisher_exact([[a, b], [c, d]])
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-14)
        if np.isfinite(ref.statistic) and b * c:
            assert odds == pytest.approx(ref.statistic)
    for a, b, c, d in ((0, 5, 5, 0), (3, 0, 0, 3), (1, 1, 1, 1), (0, 0, 3, 4)):
        assert stats.fisher_exact(a, b, c, d)[1] == pytest.approx(sps.fisher_exact([[a, b], [c, d]]).pvalue)
    for _ in range(20):
        groups = [np.round(rng.normal(m, 1, size=int(rng.integers(2, 30))), 1) for m in rng.normal(0, 1, size=4)]
        h, p, df = stats.kruskal(groups)
        ref = sps.kruskal(*groups)
        assert (h, p, df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 3)


def test_ssgsea_closed_form_equals_the_running_sum():
    """ESTIMATE's walk written out step by step (independently of the closed form in immune.py)."""
    rng = np.random.default_rng(3)
    genes = list(reference.estimate_signatures()["immune"]) + list(reference.estimate_signatures()["stromal"])
    names = genes + [f"G{i}" for i in range(400)]
    x = pd.DataFrame(rng.normal(5, 2, size=(len(names), 4)), index=names)
    got, _ = immune.scores(x)
    for j in range(4):
        order = np.argsort(-x[j].to_numpy())  # walk from the highest
        ranks = len(names) - np.arange(len(names))  # the rank of the gene at each position
        for sig in ("immune", "stromal"):
            tag = np.isin(np.array(names)[order], reference.estimate_signatures()[sig])
            w = np.where(tag, ranks ** 0.25, 0.0)
            step = w / w.sum() - (~tag) / (~tag).sum()
            assert got[sig].iat[j] == pytest.approx(np.cumsum(step).sum(), rel=1e-10)


def test_a_real_tcga_maf_is_read_without_loss(tmp_path):
    path = DATA / "tcga_laml_slice.maf.gz"
    with gzip.open(path, "rt") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    n_rows = len(lines) - 1
    assert n_rows == 300
    m = readers.read_maf([path])
    assert m.rows == 300 and len(m.variants) + sum(m.skipped.values()) == 300
    assert (m.variants["protein_change"] != "").mean() > 0.9  # Protein_Change read as the protein column
    assert m.variants["classification"].value_counts()["Silent"] == sum("\tSilent\t" in ln for ln in lines)
    barcodes = sorted(m.variants["barcode"].unique())
    # link every participant but one; that sample's rows are skipped and named
    left_out = barcodes[0]
    link = pd.DataFrame({"sample_barcode": barcodes[1:], "person_id": range(1, len(barcodes))})
    link.to_csv(tmp_path / "linkage.csv", index=False)
    clin = pd.DataFrame({"person_id": range(1, len(barcodes)), "age_at_diagnosis": 50, "race": "white",
                         "er_status": "unknown"})
    clin.to_csv(tmp_path / "clinical.csv", index=False)
    run = run_profile([path], None, tmp_path / "linkage.csv", clinical=tmp_path / "clinical.csv", cdm_name="laml")
    acc = run.accounting
    assert acc["maf_rows"] == 300
    assert acc["used"] + sum(acc["skipped"].values()) == 300
    assert acc["skipped"]["sample not linked"] == int((m.variants["barcode"] == left_out).sum())
    assert any(left_out in line and line.startswith("MAF samples not in the linkage") for line in run.notes)
    assert check_release(run.result, MIN) == []
    paths = write_outputs(run, tmp_path / "out")
    assert {p.name for p in paths} == {"results.csv", "oncoplot.png", "hotspots.png", "subtype_immune.png",
                                       "alluvial.png"}


def test_released_tables_are_declared_pass_the_audit_and_relations_hold(site):
    from optima_common.disclosure import audit as A
    from optima_common.disclosure import declarations as D
    from optima_common.disclosure.frame import audit_frame

    _, run, _ = site
    assert D.undeclared(run.raw.settings["result_type"]) == []
    assert set(run.raw.settings["result_type"]) == {"mutation_frequency", "variant_classification", "hotspot_counts",
                                                     "cooccurrence", "actionability", "molecular_subtype",
                                                     "immune_infiltration", "age_at_diagnosis"}
    f = audit_frame(run.raw)
    built = D.build_system(f)
    p = A.problem(f, built, f["num"].to_numpy())
    before = len(p.rel)
    A.fill_hidden_truth(p)
    assert len(p.rel) == before, "a declared relation does not hold on the true counts"
    assert built.system.n_rel > 100
    assert check_release(run.result, MIN) == []
    counts = run.result.data[run.result.data["estimate_name"] == "count"]["estimate_value"]
    assert not counts.isin([str(i) for i in range(1, MIN)]).any()


def test_bad_inputs_answer_one_line_and_exit_28(tmp_path, capsys):
    from site_agent.cli import main

    (tmp_path / "bad.maf").write_text("#version gdc-1.0.0\nGene\tSample\nTP53\tX\n")
    pd.DataFrame({"sample_barcode": ["X"], "person_id": [1]}).to_csv(tmp_path / "l.csv", index=False)
    pd.DataFrame({"person_id": [1]}).to_csv(tmp_path / "c.csv", index=False)
    rc = main(["genomics", "profile", "--maf", str(tmp_path / "bad.maf"), "--linkage", str(tmp_path / "l.csv"),
               "--clinical", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 28 and len(err) == 1 and "Hugo_Symbol" in err[0]
    assert not (tmp_path / "o" / "results.csv").exists()
    rc = main(["genomics", "profile", "--maf", str(tmp_path / "none.maf"), "--linkage", str(tmp_path / "l.csv"),
               "--clinical", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 28 and len(err) == 1 and "no such file" in err[0]


def test_expression_with_ensembl_ids_counts_and_a_comment_line(tmp_path):
    gm = reference.gene_map().drop_duplicates("symbol")
    pam = gm[gm["symbol"].isin(reference.pam50_centroids().index)]
    rng = np.random.default_rng(1)
    ids = [f"{e}.{i % 7 + 1}" for i, e in enumerate(pam["ensembl_gene_id"])] + ["ENSG99999999999.1"]
    m = pd.DataFrame(rng.integers(0, 5000, size=(len(ids), 3)), index=ids, columns=["S1", "S2", "S3"])
    m.iloc[0, 0] = 20000
    path = tmp_path / "x.tsv"
    path.write_text("# produced by a counting tool\n" + m.to_csv(sep="\t", index_label="gene_id"))
    ex = readers.read_expression(path)
    assert ex.kind == "counts"
    assert set(reference.pam50_centroids().index) <= set(ex.values.index)
    assert any("ENSG99999999999" in line and line.startswith("expression x.tsv: Ensembl ids outside") for line in ex.notes.lines)
    cpm = m.iloc[0, 0] / m["S1"].sum() * 1e6
    assert ex.values.iloc[0, 0] == pytest.approx(np.log2(cpm + 1))
