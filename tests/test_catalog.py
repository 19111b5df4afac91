"""The network's cohort definitions (cohort_definitions/) against their catalog and vocabulary.

* catalog.json entries exist with matching sha256, ids 1..12 unique, names as in the README;
* every cohort JSON under lung/ and breast/ is catalogued;
* each definition parses with Circe and builds SQL, which runs on an empty DuckDB CDM;
* every concept id in the JSONs is in site_agent/cdm/synth/vocab/concepts.csv with the same name;
* the committed files are what scripts/build_cohort_definitions.py generates from concepts.csv;
* a few hand-made patients exercise the semantics of the cohorts with inclusion rules.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFS = ROOT / "cohort_definitions"
VOCAB = ROOT / "site_agent" / "cdm" / "synth" / "vocab"
CATALOG = json.loads((DEFS / "catalog.json").read_text())

EXPECTED = {
    1: "lung_cancer_broad",
    2: "lung_cancer_narrow",
    3: "nsclc",
    4: "sclc",
    5: "sclc_stage_i_ii",
    6: "lung_surgery",
    7: "lung_chemotherapy",
    8: "lung_radiotherapy",
    9: "disease_progression",
    10: "death",
    11: "breast_cancer",
    12: "metastatic_breast_cancer",
}
BREAST = {"breast_cancer", "metastatic_breast_cancer"}


def _concept_rows() -> list[dict]:
    with (VOCAB / "concepts.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _cohort_entries():
    return CATALOG["cohorts"]


def _walk_concepts(obj):
    """Every ATLAS concept object (dict with CONCEPT_ID) anywhere in a JSON document."""
    if isinstance(obj, dict):
        if "CONCEPT_ID" in obj:
            yield obj
        for v in obj.values():
            yield from _walk_concepts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_concepts(v)


def _build_sql(entry) -> str:
    from circe.api import build_cohort_query, cohort_expression_from_json
    from circe.cohortdefinition import BuildExpressionQueryOptions

    expr = cohort_expression_from_json((DEFS / entry["path"]).read_text())
    opts = BuildExpressionQueryOptions()
    opts.cdm_schema = "main"
    opts.vocabulary_schema = "main"
    opts.result_schema = "results"
    opts.target_table = "results.cohort"
    opts.cohort_id = entry["cohort_definition_id"]
    opts.generate_stats = True
    return build_cohort_query(expr, opts)


def _duckdb_statements(entry) -> list[str]:
    from circe.sqlrender import render, split_sql, translate

    return split_sql(translate(render(_build_sql(entry)), "duckdb"))


def _empty_cdm():
    duckdb = pytest.importorskip("duckdb")
    from site_agent.cdm.ddl import cdm_ddl, results_ddl

    con = duckdb.connect()
    for stmt in cdm_ddl("duckdb", "5.4", "main") + results_ddl("results"):
        con.execute(stmt)
    return con


# ---------------------------------------------------------------- catalog vs files


def test_catalog_shape_ids_and_names():
    assert CATALOG["catalog_version"] == 1
    ids = [e["cohort_definition_id"] for e in _cohort_entries()]
    assert ids == list(range(1, 13))
    assert {e["cohort_definition_id"]: e["name"] for e in _cohort_entries()} == EXPECTED
    for e in _cohort_entries():
        folder = "breast" if e["name"] in BREAST else "lung"
        assert e["path"] == f"{folder}/{e['name']}.json"
        assert e["description"]


@pytest.mark.parametrize("entry", CATALOG["cohorts"] + CATALOG["concept_sets"], ids=lambda e: e["path"])
def test_catalog_entry_file_and_hash(entry):
    path = DEFS / entry["path"]
    assert path.is_file(), entry["path"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


def test_every_cohort_file_is_catalogued():
    on_disk = {p.relative_to(DEFS).as_posix() for d in ("lung", "breast") for p in (DEFS / d).glob("*.json")}
    assert on_disk == {e["path"] for e in _cohort_entries()}
    sets_on_disk = {p.relative_to(DEFS).as_posix() for p in (DEFS / "concept_sets").glob("*.json")}
    assert sets_on_disk == {e["path"] for e in CATALOG["concept_sets"]}


def test_inclusion_rule_names():
    def rules(name):
        entry = next(e for e in _cohort_entries() if e["name"] == name)
        return [r["name"] for r in json.loads((DEFS / entry["path"]).read_text())["InclusionRules"]]

    assert rules("sclc_stage_i_ii") == [
        "Age >= 18",
        "No history of cancer except skin cancer",
        "Stage I or II recorded",
    ]
    assert rules("metastatic_breast_cancer") == ["Metastasis recorded"]


def test_concepts_match_vocabulary():
    names_by_id: dict[int, set[str]] = {}
    for row in _concept_rows():
        names_by_id.setdefault(int(row["concept_id"]), set()).add(row["concept_name"])
    docs = [e["path"] for e in _cohort_entries()] + [e["path"] for e in CATALOG["concept_sets"]]
    for rel in docs:
        for concept in _walk_concepts(json.loads((DEFS / rel).read_text())):
            cid = concept["CONCEPT_ID"]
            assert cid in names_by_id, f"{rel}: concept {cid} not in concepts.csv"
            assert concept["CONCEPT_NAME"] in names_by_id[cid], (
                f"{rel}: concept {cid} named {concept['CONCEPT_NAME']!r}, concepts.csv has {names_by_id[cid]}"
            )


def test_files_are_generated_from_vocabulary():
    spec = importlib.util.spec_from_file_location("build_cohort_definitions", ROOT / "scripts" / "build_cohort_definitions.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    files = mod.build(warn=lambda msg: None)
    stale = [p for p, data in files.items() if (DEFS / p).read_bytes() != data]
    assert not stale, f"run scripts/build_cohort_definitions.py; stale: {stale}"


# ---------------------------------------------------------------- Circe


@pytest.mark.parametrize("entry", CATALOG["cohorts"], ids=lambda e: e["name"])
def test_parses_and_builds_sql(entry):
    sql = _build_sql(entry)
    assert "results.cohort" in sql.lower() or "@target_database_schema" not in sql


@pytest.mark.parametrize("entry", CATALOG["cohorts"], ids=lambda e: e["name"])
def test_runs_on_empty_duckdb_cdm(entry):
    con = _empty_cdm()
    for stmt in _duckdb_statements(entry):
        con.execute(stmt)
    assert con.execute("select count(*) from results.cohort").fetchone() == (0,)


# ---------------------------------------------------------------- semantics on a tiny CDM


def _vocab_cdm():
    """Empty CDM + concept/concept_ancestor from the synthetic vocabulary."""
    rows = {r["key"]: r for r in _concept_rows()}
    ids = [int(r["concept_id"]) for r in rows.values()]
    if 0 in ids:
        pytest.skip("concepts.csv still has concept_id 0 rows")
    con = _empty_cdm()
    seen = set()
    for r in rows.values():
        cid = int(r["concept_id"])
        if cid in seen:
            continue
        seen.add(cid)
        con.execute(
            "insert into main.concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,"
            " standard_concept, concept_code, valid_start_date, valid_end_date, invalid_reason)"
            " values (?, ?, ?, ?, ?, ?, ?, DATE '1970-01-01', DATE '2099-12-31', NULL)",
            [cid, r["concept_name"], r["domain_id"], r["vocabulary_id"], r["concept_class_id"],
             r["standard_concept"] or None, r["concept_code"] or str(cid)],
        )
    parents: dict[str, set[str]] = {}
    with (VOCAB / "hierarchy.csv").open(newline="", encoding="utf-8") as fh:
        for e in csv.DictReader(fh):
            parents.setdefault(e["child_key"], set()).add(e["parent_key"])
    pairs = set()
    for key in rows:
        stack, anc = [key], {key}
        while stack:
            for p in parents.get(stack.pop(), ()):
                if p not in anc:
                    anc.add(p)
                    stack.append(p)
        for a in anc:
            pairs.add((int(rows[a]["concept_id"]), int(rows[key]["concept_id"])))
    for a, d in sorted(pairs):
        con.execute("insert into main.concept_ancestor values (?, ?, 0, 0)", [a, d])
    return con, {k: int(r["concept_id"]) for k, r in rows.items()}


def _person(con, pid, birth_year, op=("2000-01-01", "2020-12-31")):
    con.execute(
        "insert into main.person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
        " ethnicity_concept_id) values (?, 8532, ?, 0, 0)",
        [pid, birth_year],
    )
    con.execute(
        "insert into main.observation_period values (?, ?, CAST(? AS DATE), CAST(? AS DATE), 32817)", [pid, pid, op[0], op[1]]
    )


_next_id = iter(range(1, 10_000))


def _condition(con, pid, concept, date):
    con.execute(
        "insert into main.condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,"
        " condition_start_date, condition_type_concept_id) values (?, ?, ?, CAST(? AS DATE), 32817)",
        [next(_next_id), pid, concept, date],
    )


def _measurement(con, pid, concept, date):
    con.execute(
        "insert into main.measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
        " measurement_type_concept_id) values (?, ?, ?, CAST(? AS DATE), 32817)",
        [next(_next_id), pid, concept, date],
    )


def _run(con, cohort_id):
    entry = next(e for e in _cohort_entries() if e["cohort_definition_id"] == cohort_id)
    for stmt in _duckdb_statements(entry):
        con.execute(stmt)
    return {
        r[0]: (str(r[1]), str(r[2]))
        for r in con.execute(
            "select subject_id, cohort_start_date, cohort_end_date from results.cohort"
            " where cohort_definition_id = ? order by 1",
            [cohort_id],
        ).fetchall()
    }


def test_sclc_stage_i_ii_semantics():
    con, c = _vocab_cdm()
    idx = "2010-06-01"
    # 1: stage 1A (descendant of Stage 1) 19 days after index -> in
    _person(con, 1, 1950); _condition(con, 1, c["SCLC"], idx); _measurement(con, 1, c["STAGE_1A"], "2010-06-20")
    # 2: prior colon cancer -> out (rule 2)
    _person(con, 2, 1950); _condition(con, 2, c["SCLC"], idx); _measurement(con, 2, c["C_STAGE_2"], idx)
    _condition(con, 2, c["COLON_MALIGNANT"], "2005-01-01")
    # 3: prior basal cell carcinoma of skin (allowed) + TNM M0 N1 T2 -> in
    _person(con, 3, 1950); _condition(con, 3, c["SCLC"], idx); _condition(con, 3, c["SKIN_BCC"], "2005-01-01")
    for k in ("M0", "N1", "T2"):
        _measurement(con, 3, c[k], "2010-05-10")
    # 4: TNM M0 N1 T3 -> out (rule 3)
    _person(con, 4, 1950); _condition(con, 4, c["SCLC"], idx)
    for k in ("M0", "N1", "T3"):
        _measurement(con, 4, c[k], "2010-06-10")
    # 5: age 10 at index -> out (rule 1)
    _person(con, 5, 2000); _condition(con, 5, c["SCLC"], idx); _measurement(con, 5, c["STAGE_1"], idx)
    # 6: stage recorded 61 days after index -> out (rule 3)
    _person(con, 6, 1950); _condition(con, 6, c["SCLC"], idx); _measurement(con, 6, c["STAGE_1"], "2010-08-01")
    # 7: only 100 days of prior observation -> no entry
    _person(con, 7, 1950, op=("2010-02-21", "2020-12-31")); _condition(con, 7, c["SCLC"], idx)
    _measurement(con, 7, c["STAGE_1"], idx)
    # 8: prior lung cancer before SCLC is not "other" cancer; later second SCLC record ignored -> in at first
    _person(con, 8, 1950); _condition(con, 8, c["LUNG_MALIGNANT"], "2009-01-01")
    _condition(con, 8, c["SCLC"], idx); _condition(con, 8, c["SCLC"], "2012-01-01")
    _measurement(con, 8, c["STAGE_2B"], idx)
    got = _run(con, 5)
    assert got == {1: (idx, "2020-12-31"), 3: (idx, "2020-12-31"), 8: (idx, "2020-12-31")}
    # inclusion statistics (attrition) were written for the 3 rules, in order
    stats = con.execute(
        "select rule_sequence, person_count from results.cohort_inclusion_stats"
        " where cohort_definition_id = 5 and mode_id = 0 order by 1"
    ).fetchall()
    assert [r[0] for r in stats] == [0, 1, 2]


def test_metastatic_breast_cancer_semantics():
    con, c = _vocab_cdm()
    idx = "2012-03-01"
    _person(con, 1, 1960); _condition(con, 1, c["BREAST_DUCTAL"], idx); _condition(con, 1, c["SEC_BONE"], "2012-02-10")
    _person(con, 2, 1960); _condition(con, 2, c["BREAST_MALIGNANT"], idx); _condition(con, 2, c["SEC_LIVER"], "2012-01-15")
    _person(con, 3, 1960); _condition(con, 3, c["BREAST_MALIGNANT"], idx); _condition(con, 3, c["LUNG_SECONDARY"], "2019-01-01")
    _person(con, 4, 1960); _condition(con, 4, c["BREAST_MALIGNANT"], idx)
    assert set(_run(con, 12)) == {1, 3}
    assert set(_run(con, 11)) == {1, 2, 3, 4}


def test_event_and_death_cohorts_semantics():
    con, c = _vocab_cdm()
    _person(con, 1, 1950)
    for i, (concept, date) in enumerate([("CARBOPLATIN", "2011-01-01"), ("ETOPOSIDE", "2011-01-01"),
                                         ("CISPLATIN", "2011-01-22"), ("METFORMIN", "2011-02-01")]):
        con.execute(
            "insert into main.drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date,"
            " drug_exposure_end_date, drug_type_concept_id) values (?, 1, ?, CAST(? AS DATE), CAST(? AS DATE), 32817)",
            [100 + i, c[concept], date, date],
        )
    _run(con, 7)
    got = con.execute(
        "select cohort_start_date::varchar, cohort_end_date::varchar from results.cohort"
        " where cohort_definition_id = 7 order by 1"
    ).fetchall()
    assert got == [("2011-01-01", "2011-01-01"), ("2011-01-22", "2011-01-22")]
    con.execute("insert into main.death (person_id, death_date, death_type_concept_id) values (1, DATE '2015-05-05', 32817)")
    assert _run(con, 10) == {1: ("2015-05-05", "2015-05-05")}
