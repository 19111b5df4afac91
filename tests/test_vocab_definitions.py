"""The network's definitions against a real vocabulary (issue 15).

* no definition or concept set references a placeholder id (>= 2,000,000,000) or 0, and every id
  has a STRONG or MODERATE row in ``cohort_definitions/vocab_evidence.csv`` with the same name;
* the SCLC stage I-II rule keeps its skin-cancer exception on a vocabulary built from the evidence
  file alone (only real ids), with and without the skin hierarchy;
* staging as sites record it: stage groups of the 7th and 8th edition, clinical and pathological,
  sub-stages through descendants, and T/N/M categories clinical and pathological, mixed;
* a pathological-only synthetic site (pT/pN/pM, no stage group): Circe's count equals the
  generator's truth.

Expected memberships are written next to each hand-built patient, before running.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.test_catalog import _duckdb_statements, _empty_cdm, _vocab_cdm

ROOT = Path(__file__).resolve().parent.parent
DEFS = ROOT / "cohort_definitions"
CATALOG = json.loads((DEFS / "catalog.json").read_text())
EVIDENCE = DEFS / "vocab_evidence.csv"
HIERARCHY = ROOT / "site_agent" / "cdm" / "synth" / "vocab" / "hierarchy.csv"
CONCEPTS = ROOT / "site_agent" / "cdm" / "synth" / "vocab" / "concepts.csv"


def _concepts_in(obj):
    if isinstance(obj, dict):
        if "CONCEPT_ID" in obj:
            yield obj
        for v in obj.values():
            yield from _concepts_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _concepts_in(v)


def _evidence() -> list[dict]:
    with EVIDENCE.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ ids and their evidence


@pytest.mark.parametrize("entry", CATALOG["cohorts"] + CATALOG["concept_sets"], ids=lambda e: e["path"])
def test_no_placeholder_and_every_id_has_evidence(entry):
    evidence = {int(r["concept_id"]): r for r in _evidence()}
    for c in _concepts_in(json.loads((DEFS / entry["path"]).read_text())):
        cid = c["CONCEPT_ID"]
        assert 0 < cid < 2_000_000_000, f"{entry['path']}: placeholder or zero concept id {cid}"
        row = evidence.get(cid)
        assert row is not None, f"{entry['path']}: concept {cid} has no row in vocab_evidence.csv"
        assert row["strength"] in ("STRONG", "MODERATE"), f"{cid}: evidence is {row['strength']!r}"
        assert row["used_in_definitions"] == "yes" and row["evidence"].strip()
        assert row["concept_name"] == c["CONCEPT_NAME"], f"{cid}: {row['concept_name']!r} != {c['CONCEPT_NAME']!r}"


def test_evidence_rows_name_a_public_source():
    for r in _evidence():
        if r["used_in_definitions"] == "yes":
            # a repository@commit (or a find_string file id) and how the id is paired with its name
            assert "@" in r["evidence"] or "file id" in r["evidence"], r["concept_id"]


# ------------------------------------------------------------------ a vocabulary of real ids only


def _evidence_vocab_cdm(*, with_hierarchy: bool, unlink_skin_leaves: bool = False):
    """Empty CDM whose concept table is the evidence file alone; concept_ancestor holds the
    self pairs and, if asked, the synthetic vocabulary's edges between two evidence ids.
    ``unlink_skin_leaves``: BCC and SCC stay below malignant neoplastic disease but not below
    malignant neoplasm of skin (a vocabulary whose skin hierarchy differs from ours)."""
    con = _empty_cdm()
    rows = _evidence()
    for r in rows:
        con.execute(
            "insert into main.concept values (?, ?, ?, ?, ?, ?, ?, DATE '1970-01-01', DATE '2099-12-31', NULL)",
            [int(r["concept_id"]), r["concept_name"], r["domain_id"] or "Condition", r["vocabulary_id"] or "SNOMED",
             "x", r["standard_concept"] or None, r["concept_code"] or r["concept_id"]],
        )
    ids = {int(r["concept_id"]) for r in rows}
    pairs = {(i, i) for i in ids}
    if with_hierarchy:
        with CONCEPTS.open(newline="", encoding="utf-8") as fh:
            key_id = {r["key"]: int(r["concept_id"]) for r in csv.DictReader(fh)}
        parents: dict[int, set[int]] = {}
        with HIERARCHY.open(newline="", encoding="utf-8") as fh:
            for e in csv.DictReader(fh):
                parents.setdefault(key_id[e["child_key"]], set()).add(key_id[e["parent_key"]])
        for cid in ids:
            stack, seen = [cid], {cid}
            while stack:
                for p in parents.get(stack.pop(), ()):
                    if p not in seen:
                        seen.add(p)
                        stack.append(p)
            pairs |= {(a, cid) for a in seen if a in ids}
    if unlink_skin_leaves:
        pairs -= {(a, d) for a in (4155297, 139750) for d in (4112752, 4111921)}
    for a, d in sorted(pairs):
        con.execute("insert into main.concept_ancestor values (?, ?, 0, 0)", [a, d])
    return con


_ids = iter(range(1, 100_000))


def _person(con, pid, birth_year=1950, op=("2000-01-01", "2020-12-31")):
    con.execute("insert into main.person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
                " ethnicity_concept_id) values (?, 8507, ?, 0, 0)", [pid, birth_year])
    con.execute("insert into main.observation_period values (?, ?, CAST(? AS DATE), CAST(? AS DATE), 32817)",
                [pid, pid, *op])


def _condition(con, pid, concept, date):
    con.execute("insert into main.condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,"
                " condition_start_date, condition_type_concept_id) values (?, ?, ?, CAST(? AS DATE), 32817)",
                [next(_ids), pid, concept, date])


def _measurement(con, pid, concept, date):
    con.execute("insert into main.measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
                " measurement_type_concept_id) values (?, ?, ?, CAST(? AS DATE), 32817)", [next(_ids), pid, concept, date])


def _members(con, cohort_id: int) -> set[int]:
    entry = next(e for e in CATALOG["cohorts"] if e["cohort_definition_id"] == cohort_id)
    for stmt in _duckdb_statements(entry):
        con.execute(stmt)
    return {r[0] for r in con.execute("select subject_id from results.cohort where cohort_definition_id = ?",
                                      [cohort_id]).fetchall()}


# real ids (vocab_evidence.csv)
SCLC, BCC, SCC, SKIN, COLON_FREE_MALIGNANT, LUNG = 4110591, 4112752, 4111921, 4155297, 443392, 443388
C8_STAGE_1, P8_STAGE_2, P8_STAGE_3 = 1635758, 1635386, 1634705


@pytest.mark.parametrize("unlink", [False, True], ids=["skin-hierarchy", "skin-leaves-unlinked"])
def test_skin_cancer_exception_on_real_ids_only(unlink):
    con = _evidence_vocab_cdm(with_hierarchy=True, unlink_skin_leaves=unlink)
    if unlink:  # the leaves really are below "Malignant neoplastic disease" only
        assert con.execute("select count(*) from main.concept_ancestor where ancestor_concept_id = 443392"
                           " and descendant_concept_id in (4112752, 4111921)").fetchone()[0] == 2
        assert con.execute("select count(*) from main.concept_ancestor where ancestor_concept_id = 4155297"
                           " and descendant_concept_id in (4112752, 4111921)").fetchone()[0] == 0
    idx = "2010-06-01"
    for pid in range(1, 7):
        _person(con, pid)
        _condition(con, pid, SCLC, idx)
        _measurement(con, pid, C8_STAGE_1, "2010-06-10")
    _condition(con, 1, BCC, "2004-03-01")    # prior basal cell carcinoma of skin -> in
    _condition(con, 2, SCC, "2008-01-01")    # prior squamous cell carcinoma of skin -> in
    _condition(con, 3, SKIN, "2009-09-09")   # prior "Malignant neoplasm of skin" itself -> in
    _condition(con, 4, COLON_FREE_MALIGNANT, "2005-01-01")  # prior malignancy, not skin/lung -> out
    _condition(con, 5, LUNG, "2009-01-01")   # earlier lung cancer record is not "other" cancer -> in
    # 6: no history at all -> in
    assert _members(con, 5) == {1, 2, 3, 5, 6}


# ------------------------------------------------------------------ staging as sites record it


def test_stage_rule_reads_every_edition_and_pathological_tnm():
    con, c = _vocab_cdm()
    idx = "2011-03-01"
    for pid in range(1, 12):
        _person(con, pid)
        _condition(con, pid, c["SCLC"], idx)
    for k in ("PT1", "PN0", "PM0"):                 # 1: pathological-only, T1 N0 M0 -> in
        _measurement(con, 1, c[k], "2011-03-20")
    for k in ("PT2", "PN1", "M0"):                  # 2: pT2 pN1 with a clinical cM0 -> in
        _measurement(con, 2, c[k], "2011-04-01")
    for k in ("PT3", "PN1", "PM0"):                 # 3: T3 N1 is stage III -> out
        _measurement(con, 3, c[k], "2011-03-05")
    _measurement(con, 4, c["P7_STAGE_2"], idx)      # 4: 7th-edition pathological stage 2 -> in
    _measurement(con, 5, c["P_STAGE_3"], idx)       # 5: 8th pathological stage 3 -> out
    for k in ("C7_T2", "C7_N0", "C7_M0"):           # 6: 7th-edition clinical T2 N0 M0 -> in
        _measurement(con, 6, c[k], "2011-02-15")
    for k in ("P7_T1", "P7_N0"):                    # 7: no M category recorded -> out
        _measurement(con, 7, c[k], "2011-03-02")
    _measurement(con, 8, c["STAGE_2A"], "2011-03-03")  # 8: sub-stage 2A, a descendant of stage 2 -> in
    for k in ("PT1", "PN0", "PM1"):                 # 9: pM1 -> out
        _measurement(con, 9, c[k], "2011-03-20")
    for k in ("P7_T3", "P7_N0", "P7_M0"):           # 10: 7th pathological T3 N0 M0 -> in
        _measurement(con, 10, c[k], "2011-03-20")
    _measurement(con, 11, c["P_STAGE_1"], "2011-05-10")  # 11: 8th pathological stage 1, day 70 -> out
    assert _members(con, 5) == {1, 2, 4, 6, 8, 10}


def test_pathological_only_site_matches_truth(tmp_path):
    """site_6 (oncology) records stage as pT/pN/pM or pathological stage group only."""
    from site_agent.cdm import connect_cdm
    from site_agent.cdm.synth import generate_site
    from site_agent.cdm.synth.params import SiteParams
    from site_agent.cohorts import build_cohorts, collect_definitions

    params = SiteParams.derive("site_6", "oncology")
    assert (params.staging, params.staging_alt) == ("ptnm", "pathological")
    res = generate_site(tmp_path / "site6.duckdb", persons=6000, site="site_6", profile="oncology", seed=3)
    c = {r["key"]: int(r["concept_id"]) for r in csv.DictReader(CONCEPTS.open(newline="", encoding="utf-8"))}
    clinical = [c[k] for k in ("T1", "T2", "T3", "T4", "N0", "N1", "N2", "N3", "STAGE_1", "STAGE_2", "STAGE_3",
                               "C_STAGE_1", "C_STAGE_2", "C_STAGE_3", "C_STAGE_4")]
    pathological = [c[k] for k in ("PT1", "PT2", "PT3", "PT4", "PN0", "PN1", "P_STAGE_1", "P_STAGE_4")]
    import duckdb

    con = duckdb.connect(str(res.out), read_only=True)
    n_clin = con.execute(f"select count(*) from measurement where measurement_concept_id in ({','.join(map(str, clinical))})").fetchone()[0]
    n_path = con.execute(f"select count(*) from measurement where measurement_concept_id in ({','.join(map(str, pathological))})").fetchone()[0]
    con.close()
    assert n_clin == 0 and n_path > 0
    target = [d for d in collect_definitions([str(DEFS / "lung")]) if d.cohort_definition_id in (4, 5)]
    with connect_cdm(f"duckdb:///{res.out}") as cdm:
        counts = {x.cohort_name: x.number_subjects for x in build_cohorts(cdm, target)}
    assert counts["sclc_stage_i_ii"] == res.truth["sclc_stage_i_ii"]["subjects"]
    assert counts["sclc"] == res.truth["sclc"]["subjects"]
