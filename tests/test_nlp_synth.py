"""The generator's radiology reports (``cdm synth --notes``) against its own truth file: the
extractor must reach F1 >= 0.95 for presence and for every site; default CDMs hold no notes."""

from __future__ import annotations

import csv

import duckdb
import pytest

from site_agent.cdm.synth import generate_site
from site_agent.cdm.synth.notes import truth_path

pytest.importorskip("medspacy", reason="the nlp extra is not installed: pip install -e '.[nlp]'")


@pytest.fixture(scope="module")
def cdm(tmp_path_factory):
    out = tmp_path_factory.mktemp("nlp_synth") / "site.duckdb"
    res = generate_site(out, persons=4000, site="north", profile="oncology", seed=3, notes=True)
    return out, res


def _f1(pairs):
    tp = sum(t and g for t, g in pairs)
    fp = sum(g and not t for t, g in pairs)
    fn = sum(t and not g for t, g in pairs)
    return 2 * tp / (2 * tp + fp + fn), tp


def test_reports_and_truth_are_written(cdm):
    out, res = cdm
    con = duckdb.connect(str(out), read_only=True)
    n, titles, dental = con.execute("SELECT count(*), count(DISTINCT note_title), "
                                    "sum(CASE WHEN note_title LIKE 'DENTAL%' THEN 1 ELSE 0 END) FROM main.note").fetchone()
    truth = list(csv.DictReader(open(truth_path(out), encoding="utf-8")))
    assert n == len(truth) == res.counts["note"] > 200
    assert titles >= 8 and dental > 0
    # every report stated metastatic belongs to a patient with a structured metastasis on or before it,
    # but for the uncoded ones (a metastasis seen on imaging, never coded): those patients have none at all
    bad = con.execute("""
        SELECT count(*) FROM read_csv_auto(?) t WHERE t.metastatic = 1 AND t.uncoded = 0 AND NOT EXISTS (
          SELECT 1 FROM main.condition_occurrence c JOIN main.concept k ON k.concept_id = c.condition_concept_id
          WHERE c.person_id = t.person_id AND k.concept_name LIKE 'Secondary malignant%'
            AND c.condition_start_date <= CAST(t.note_date AS DATE))""", [str(truth_path(out))]).fetchone()[0]
    assert bad == 0
    uncoded = con.execute("""
        SELECT count(DISTINCT t.person_id), sum(CASE WHEN EXISTS (
          SELECT 1 FROM main.condition_occurrence c JOIN main.concept k ON k.concept_id = c.condition_concept_id
          WHERE c.person_id = t.person_id AND k.concept_name LIKE 'Secondary malignant%') THEN 1 ELSE 0 END)
        FROM read_csv_auto(?) t WHERE t.uncoded = 1""", [str(truth_path(out))]).fetchone()
    assert uncoded[0] >= 1 and uncoded[1] == 0  # some, and none of them has a coded metastasis
    assert not str(truth_path(out)).startswith(str(out) + "/")  # beside the CDM file, not inside anything released


def test_extractor_f1_on_generator_reports(cdm):
    from site_agent.nlp import extract_many, strip_system_lines

    out, _ = cdm
    con = duckdb.connect(str(out), read_only=True)
    notes = dict(con.execute("SELECT note_id, note_text FROM main.note").fetchall())
    truth = {int(r["note_id"]): r for r in csv.DictReader(open(truth_path(out), encoding="utf-8"))}
    got = {int(r.id): r for r in extract_many((str(k), strip_system_lines(v)) for k, v in notes.items())}
    f1, tp = _f1([(t["metastatic"] == "1", got[k].metastatic) for k, t in truth.items()])
    assert tp >= 20 and f1 >= 0.95
    for site in ("liver", "bone", "brain", "lung"):
        f1, tp = _f1([(site in t["sites"].split(";"), site in got[k].sites) for k, t in truth.items()])
        assert tp >= 2 and f1 >= 0.95, (site, tp, f1)  # brain is ~10 % of the metastases


def test_default_cdm_has_no_notes(tmp_path):
    out = tmp_path / "plain.duckdb"
    generate_site(out, persons=1000, site="north", profile="oncology", seed=3)
    con = duckdb.connect(str(out), read_only=True)
    assert con.execute("SELECT count(*) FROM main.note").fetchone()[0] == 0
    assert not truth_path(out).exists()


def test_breast_centre_profile(tmp_path):
    """The demo's breast cancer unit: mostly women, a quarter or more of persons with breast cancer,
    a fifth to two fifths of them metastatic (design in site_agent/cdm/synth/params.py)."""
    out = tmp_path / "breast.duckdb"
    res = generate_site(out, persons=1000, site="breast_centre", profile="breast-centre", seed=4)
    con = duckdb.connect(str(out), read_only=True)
    women = con.execute("SELECT avg(CASE WHEN gender_concept_id = 8532 THEN 1.0 ELSE 0 END) FROM main.person").fetchone()[0]
    assert women > 0.75
    breast, met = res.truth["breast_cancer"]["subjects"], res.truth["metastatic_breast_cancer"]["subjects"]
    assert breast >= 200 and 0.15 <= met / breast <= 0.4, (breast, met)
