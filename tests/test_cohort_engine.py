"""Cohort engine on Eunomia, on DuckDB and PostgreSQL, against an independent SQL count."""

from __future__ import annotations

import json
import shutil

import pytest

from optima_common.errors import (
    CdmValidationError,
    CohortBuildError,
    CohortDefinitionError,
)
from site_agent.cdm import connect_cdm
from site_agent.cohorts import build_cohorts, cohort_attrition, collect_definitions
from tests.conftest import REPO

GIB = REPO / "tests" / "data" / "gi_bleed_adults.json"


def independent_gi_bleed_adults(cdm) -> set[tuple[int, str, str]]:
    """First-ever GI bleed (192671 and descendants) inside an observation period, age >= 18.

    Written directly from the cohort's meaning, without Circe: the second implementation.
    """
    s = cdm.cdm_schema
    df = cdm.query_df(f"""
        WITH firsts AS (
          SELECT person_id, MIN(condition_start_date) AS d FROM {s}.condition_occurrence
          WHERE condition_concept_id IN (SELECT descendant_concept_id FROM {s}.concept_ancestor
                                         WHERE ancestor_concept_id = 192671)
          GROUP BY person_id)
        SELECT f.person_id, f.d, op.observation_period_end_date AS e
        FROM firsts f
        JOIN {s}.observation_period op ON op.person_id = f.person_id
             AND f.d BETWEEN op.observation_period_start_date AND op.observation_period_end_date
        JOIN {s}.person p ON p.person_id = f.person_id
        WHERE EXTRACT(YEAR FROM f.d) - p.year_of_birth >= 18""")
    return {(int(r.person_id), str(r.d)[:10], str(r.e)[:10]) for r in df.itertuples()}


def cohort_rows(cdm, cid: int) -> set[tuple[int, str, str]]:
    df = cdm.query_df(f"SELECT subject_id, cohort_start_date, cohort_end_date FROM {cdm.write_schema}.cohort "
                      f"WHERE cohort_definition_id = {cid}")
    return {(int(r.subject_id), str(r.cohort_start_date)[:10], str(r.cohort_end_date)[:10]) for r in df.itertuples()}


def test_cohort_matches_independent_query_on_both_backends(eunomia_cdm):
    url, schema, write = eunomia_cdm
    defs = collect_definitions([GIB])
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        cdm_tables_before = cdm.table_columns(schema)
        counts = build_cohorts(cdm, defs)
        expected = independent_gi_bleed_adults(cdm)
        assert len(expected) > 400  # Eunomia has ~480 first GI bleeds
        assert cohort_rows(cdm, defs[0].cohort_definition_id) == expected
        assert counts[0].number_subjects == counts[0].number_records == len(expected)
        steps = cohort_attrition(cdm, defs[0])
        assert [s.reason for s in steps][1] == "Age >= 18"
        assert steps[-1].number_subjects == len(expected)
        # re-running replaces the cohort's rows instead of appending
        again = build_cohorts(cdm, defs)
        assert again == counts
        assert len(cohort_rows(cdm, defs[0].cohort_definition_id)) == len(expected)
        # nothing was created in the CDM schema; everything went to the write schema
        assert cdm.table_columns(schema) == cdm_tables_before
        assert set(cdm.table_columns(write)) >= {"cohort", "cohort_inclusion", "cohort_inclusion_result"}


def test_missing_domain_table_refused_before_any_sql(eunomia_cdm, tmp_path):
    """A CDM lacking a table is refused up front, naming it; the earlier build survives intact."""
    url, schema, write = eunomia_cdm
    defs = collect_definitions([GIB])
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        build_cohorts(cdm, defs)
        cid = defs[0].cohort_definition_id
        before = cohort_rows(cdm, cid)
        assert before
        broken = tmp_path / "needs_missing_table.json"
        doc = json.loads(GIB.read_text())
        doc["PrimaryCriteria"]["CriteriaList"] = [{"ConditionOccurrence": {"CodesetId": 0}}]
        broken.write_text(json.dumps(doc))
        with cdm.transaction() as script:
            script.execute(f"ALTER TABLE {schema}.condition_occurrence RENAME TO condition_occurrence_x")
        try:
            bdefs = collect_definitions([broken])
            assert bdefs[0].cohort_definition_id == cid  # same id: a failed rebuild must keep the old rows
            with pytest.raises(CdmValidationError, match=rf"{schema}\.condition_occurrence\b"):
                build_cohorts(cdm, bdefs)
        finally:
            with cdm.transaction() as script:
                script.execute(f"ALTER TABLE {schema}.condition_occurrence_x RENAME TO condition_occurrence")
        assert cohort_rows(cdm, cid) == before


def test_sql_error_rolls_back(eunomia_cdm, tmp_path, monkeypatch):
    """If a statement fails after Circe deleted the old rows, the delete is rolled back too."""
    url, schema, write = eunomia_cdm
    defs = collect_definitions([GIB])
    import site_agent.cohorts.build as build_mod

    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        build_cohorts(cdm, defs)
        cid = defs[0].cohort_definition_id
        before = cohort_rows(cdm, cid)
        assert before
        real = build_mod.cohort_sql

        def failing(*a, **k):
            stmts = real(*a, **k)
            cut = next(i for i, s in enumerate(stmts) if "INSERT INTO" in s.upper() and f"{write}.cohort " in s)
            return stmts[: cut + 1] + ["SELECT no_such_column FROM no_such_table"]

        monkeypatch.setattr(build_mod, "cohort_sql", failing)
        with pytest.raises(CohortBuildError, match=f"cohort {cid}"):
            build_cohorts(cdm, defs)
        assert cohort_rows(cdm, cid) == before


def test_folder_order_and_skipping(tmp_path):
    root = tmp_path / "defs"
    (root / "sub").mkdir(parents=True)
    shutil.copy(GIB, root / "sub" / "b.json")
    shutil.copy(GIB, root / "a.json")
    (root / "concept_set.json").write_text(json.dumps({"items": []}))
    (root / "study.json").write_text(json.dumps({"study_id": "x", "analyses": []}))
    from site_agent.cohorts.definitions import file_sha256

    (root / "catalog.json").write_text(json.dumps({"cohorts": [
        {"cohort_definition_id": 1007, "name": "second", "path": "a.json", "sha256": file_sha256(root / "a.json")},
        {"cohort_definition_id": 1003, "name": "first", "path": "sub/b.json",
         "sha256": file_sha256(root / "sub/b.json")},
    ]}))
    defs = collect_definitions([root])
    assert [(d.cohort_definition_id, d.cohort_name) for d in defs] == [(1003, "first"), (1007, "second")]
    # files outside a catalog: name from the file, the next free id above every network catalog id
    other = tmp_path / "loose"
    other.mkdir()
    shutil.copy(GIB, other / "my_cohort.json")
    assert [(d.cohort_definition_id, d.cohort_name) for d in collect_definitions([other])] == [(1000, "my_cohort")]
    # a user catalog may not give a network catalog id to another definition
    (root / "catalog.json").write_text(json.dumps({"cohorts": [
        {"cohort_definition_id": 1, "name": "mine", "path": "a.json", "sha256": file_sha256(root / "a.json")}]}))
    with pytest.raises(CohortDefinitionError, match="cohort id 1 is the network catalog's"):
        collect_definitions([root])


def test_tampered_catalog_file_refused(tmp_path):
    root = tmp_path / "defs"
    root.mkdir()
    shutil.copy(GIB, root / "a.json")
    (root / "catalog.json").write_text(json.dumps({"cohorts": [
        {"cohort_definition_id": 1001, "name": "a", "path": "a.json", "sha256": "0" * 64}]}))
    with pytest.raises(CohortDefinitionError, match="differs from the catalog"):
        collect_definitions([root])


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    ('{"items": []}', "not an ATLAS cohort definition"),
    ('{"PrimaryCriteria": {"CriteriaList": "oops"}}', "not a valid Circe cohort expression"),
])
def test_bad_definition_files(tmp_path, content, message, eunomia_duckdb):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(CohortDefinitionError, match=message) as err:
        defs = collect_definitions([bad])
        with connect_cdm(str(eunomia_duckdb)) as cdm:
            build_cohorts(cdm, defs)
    assert str(bad) in str(err.value)
