"""`site-agent nlp metastasis` over a synthetic CDM with reports: counts against the generator's
truth, declared relations, suppression of P/R/F1 with their counts, note_nlp only in the write schema,
and the CIs against independent computations (SciPy's Wilson interval, the delta-method F1 interval)."""

from __future__ import annotations

import csv
import math

import duckdb
import numpy as np
import pytest

from optima_common.agreement import f1_interval, metrics, wilson
from optima_common.results import SUPPRESSED
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site
from site_agent.cdm.synth.notes import truth_path
from site_agent.cdm.synth.vocabulary import Vocabulary

pytest.importorskip("medspacy", reason="the nlp extra is not installed: pip install -e '.[nlp]'")

SEC = {"liver": "SEC_LIVER", "bone": "SEC_BONE", "brain": "SEC_BRAIN", "lung": "LUNG_SECONDARY"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from site_agent.nlp.cdm_run import nlp_metastasis_result, release

    out = tmp_path_factory.mktemp("nlp_cdm") / "site.duckdb"
    generate_site(out, persons=4000, site="east", profile="oncology", seed=5, notes=True)
    with connect_cdm(f"duckdb:///{out}", write_schema="results") as cdm:
        raw, summary = nlp_metastasis_result(cdm, "east", 5, write_nlp=True)
    return out, raw, release(raw, 5), summary


def _value(result, group, variable, estimate, level=None):
    d = result.data
    sel = (d["group_level"] == group) & (d["variable_name"] == variable) & (d["estimate_name"] == estimate)
    if level is not None:
        sel &= d["variable_level"] == level
    vals = d.loc[sel, "estimate_value"].tolist()
    assert len(vals) == 1, (group, variable, estimate, level)
    return vals[0]


def test_report_counts_match_the_generator(run):
    out, raw, _, summary = run
    truth = list(csv.DictReader(open(truth_path(out), encoding="utf-8")))
    assert int(_value(raw, "overall", "reports", "count", "read")) == len(truth)
    # kept: relevant reports (after diagnosis, not dental) of a kept modality (plain X-ray is not one)
    kept = [t for t in truth if t["relevant"] == "1" and not t["note_title"].startswith("XR")]
    assert int(_value(raw, "overall", "reports", "count", "kept")) == len(kept) == summary["reports_kept"]
    dental = sum(t["note_title"].startswith("DENTAL") for t in truth)
    assert int(_value(raw, "overall", "reports", "count", "filtered: modality (dental)")) == dental


def test_person_counts_match_the_generator(run):
    out, raw, _, _ = run
    truth = [t for t in csv.DictReader(open(truth_path(out), encoding="utf-8"))
             if t["relevant"] == "1" and not t["note_title"].startswith("XR")]
    persons = {int(t["person_id"]) for t in truth}
    assert int(_value(raw, "overall", "number subjects", "count")) == len(persons)
    v = Vocabulary.load()
    con = duckdb.connect(str(out), read_only=True)
    for site, key in SEC.items():
        nlp = {int(t["person_id"]) for t in truth if site in t["sites"].split(";")}
        assert int(_value(raw, site, "nlp positive", "count")) == len(nlp), site
        ids = ", ".join(str(int(i)) for i in v.ids_of(v.descendants(key)))
        structured = {p for (p,) in con.execute(
            f"SELECT DISTINCT c.person_id FROM main.condition_occurrence c JOIN results.cohort k "
            f"ON k.subject_id = c.person_id AND k.cohort_definition_id = 11 "
            f"WHERE c.condition_concept_id IN ({ids}) AND c.condition_start_date >= k.cohort_start_date - 30"
        ).fetchall()} & persons
        assert int(_value(raw, site, "structured positive", "count")) == len(structured), site
        tp = len(nlp & structured)
        assert int(_value(raw, site, "agreement", "tp_count")) == tp
        assert int(_value(raw, site, "agreement", "fp_count")) == len(nlp - structured)
        assert int(_value(raw, site, "agreement", "fn_count")) == len(structured - nlp)


def test_declared_relations_hold_on_the_truth(run):
    from optima_common.disclosure import audit as A
    from optima_common.disclosure import declarations as D
    from optima_common.disclosure.frame import audit_frame

    _, raw, _, _ = run
    f = audit_frame(raw)
    built = D.build_system(f)
    p = A.problem(f, built, f["num"].to_numpy())
    before = len(p.rel)
    A.fill_hidden_truth(p)
    assert len(p.rel) == before and built.system.n_rel >= 1 + 3 * 11
    assert D.undeclared(set(raw.settings["result_type"])) == []


def test_release_passes_the_audit_and_withholds_derived_with_counts(run):
    from optima_common.disclosure import check_release

    _, raw, released, _ = run
    assert check_release(released, 5) == []
    d = released.data
    assert len(d) == len(raw.data)
    counts = d["estimate_value"][d["estimate_name"].str.endswith("count")]
    assert not counts.isin([str(i) for i in range(1, 5)]).any()
    for site, g in d[d["group_name"] == "metastasis_site"].groupby("group_level"):
        cell = g[g["variable_name"] == "agreement"]
        if (cell["estimate_name"].isin(["tp_count", "fp_count", "fn_count"])
                & (cell["estimate_value"] == SUPPRESSED)).any():
            derived = cell[~cell["estimate_name"].str.endswith("count")]
            assert derived["estimate_value"].isna().all() or (derived["estimate_value"].fillna(SUPPRESSED)
                                                              == SUPPRESSED).all(), site
    assert (d["estimate_value"] == SUPPRESSED).any()  # a site this small has something to protect


def test_note_nlp_only_in_the_write_schema(run):
    out, raw, _, summary = run
    con = duckdb.connect(str(out), read_only=True)
    assert con.execute("SELECT count(*) FROM main.note_nlp").fetchone()[0] == 0
    n, yes, concepts = con.execute("SELECT count(*), sum(CASE WHEN term_exists = 'Y' THEN 1 ELSE 0 END), "
                                   "count(DISTINCT note_nlp_concept_id) FROM results.note_nlp").fetchone()
    assert n == summary["note_nlp_rows"] > 0 and 0 < yes < n and concepts >= 2
    # every offset points at its words in the note text as stored (system lines are blanked, not cut)
    bad = con.execute('SELECT count(*) FROM results.note_nlp x JOIN main.note n USING (note_id) '
                      'WHERE substr(n.note_text, CAST(x."offset" AS INTEGER) + 1, length(x.lexical_variant)) '
                      '<> x.lexical_variant').fetchone()[0]
    assert bad == 0


@pytest.mark.parametrize("k, n", [(0, 10), (3, 7), (45, 50), (120, 130), (1, 1)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_f1_interval_agrees_with_the_delta_method():
    """Takahashi et al. 2022 (delta method for F1 from a multinomial): var(F1) =
    2 TP (FN + FP)(TP(FN + FP) ... ) simplified here by a direct numeric gradient of F1(p) at p̂."""
    tp, fp, fn, tn = 300, 40, 60, 2000
    n = tp + fp + fn + tn
    p = np.array([tp, fp, fn, tn]) / n
    f = lambda q: 2 * q[0] / (2 * q[0] + q[1] + q[2])
    grad = np.array([(f(p + e * 1e-7) - f(p - e * 1e-7)) / 2e-7 for e in np.eye(4)])
    cov = (np.diag(p) - np.outer(p, p)) / n
    se = math.sqrt(grad @ cov @ grad)
    lo, hi = f1_interval(tp, fp, fn, tn)
    assert lo == pytest.approx(f(p) - 1.96 * se, abs=0.01) and hi == pytest.approx(f(p) + 1.96 * se, abs=0.01)
    m = metrics(tp, fp, fn, tn)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and m["precision"] == pytest.approx(tp / (tp + fp))
    assert math.isnan(metrics(0, 0, 0, 10)["precision"])


@pytest.mark.postgres
def test_same_counts_on_postgresql(run, pg_url):
    """The same CDM copied into PostgreSQL gives the same released rows and writes note_nlp there."""
    from site_agent.cdm.transfer import copy_duckdb_to_postgres
    from site_agent.nlp.cdm_run import nlp_metastasis_result

    out, raw, _, summary = run
    copy_duckdb_to_postgres(out, pg_url, "nlp_cdm")
    with connect_cdm(pg_url, cdm_schema="nlp_cdm", write_schema="nlp_results") as cdm:
        pg_raw, pg_summary = nlp_metastasis_result(cdm, "east", 5, write_nlp=True)
        n = cdm.scalar("SELECT count(*) FROM nlp_results.note_nlp")
    counts = lambda r: r.data[r.data["estimate_name"].str.endswith("count")][
        ["group_level", "variable_name", "variable_level", "estimate_name", "estimate_value"]].reset_index(drop=True)
    assert counts(pg_raw).equals(counts(raw))
    assert n == summary["note_nlp_rows"] == pg_summary["note_nlp_rows"]


def test_modality_from_the_note_class_concept(tmp_path):
    """A report without a title is kept when its class concept names a kept modality, filtered when
    it names none (expectations written before running)."""
    import shutil

    from site_agent.nlp.cdm_run import nlp_metastasis_result

    src = tmp_path / "a.duckdb"
    generate_site(src, persons=1500, site="east", profile="oncology", seed=5, notes=True)
    con = duckdb.connect(str(src))
    con.execute("INSERT INTO main.concept VALUES (2099000001, 'CT Chest and Abdomen', 'Meas Value', 'LOINC', "
                "'Doc Kind', NULL, 'x1', DATE '2000-01-01', DATE '2099-12-31', NULL)")
    con.execute("INSERT INTO main.concept VALUES (2099000002, 'Discharge summary', 'Meas Value', 'LOINC', "
                "'Doc Kind', NULL, 'x2', DATE '2000-01-01', DATE '2099-12-31', NULL)")
    first, second = con.execute("SELECT note_id FROM main.note WHERE note_title = 'CT CHEST' ORDER BY note_id "
                                "LIMIT 2").fetchall()
    con.execute(f"UPDATE main.note SET note_title = NULL, note_class_concept_id = 2099000001 WHERE note_id = {first[0]}")
    con.execute(f"UPDATE main.note SET note_title = NULL, note_class_concept_id = 2099000002 WHERE note_id = {second[0]}")
    con.close()
    with connect_cdm(f"duckdb:///{src}", write_schema="results") as cdm:
        raw, _ = nlp_metastasis_result(cdm, "east", 5)
    before = [t for t in csv.DictReader(open(truth_path(src), encoding="utf-8"))
              if t["relevant"] == "1" and not t["note_title"].startswith("XR")]
    assert int(_value(raw, "overall", "reports", "count", "kept")) == len(before) - 1
    assert int(_value(raw, "overall", "reports", "count", "filtered: modality (other)")) >= 1
    shutil.rmtree(tmp_path, ignore_errors=True)
