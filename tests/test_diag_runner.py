"""The diagnostics runner: incremental, resumable, deterministic, suppressed before writing.

Uses small real-SQL diagnostics defined here, so the runner's behaviour is tested apart
from the diagnostic modules themselves.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from optima_common.results import SummarisedResult, validate_csv
from site_agent.cdm import connect_cdm
from site_agent.cohorts import collect_definitions
from site_agent.diagnostics.base import Diagnostic, settings_row
from site_agent.diagnostics.runner import count_small_cells, run_diagnostics
from tests.conftest import REPO

GIB = REPO / "tests" / "data" / "gi_bleed_adults.json"
CALLS: list[str] = []


def _persons(ctx, unit):
    CALLS.append("persons")
    n = ctx.cdm.scalar(f"SELECT count(*) FROM {ctx.cdm_schema}.person")
    return SummarisedResult.from_records(
        [{"cdm_name": ctx.cdm_name, "variable_name": "Number subjects", "estimate_name": "count",
          "estimate_type": "integer", "estimate_value": str(n)}], [settings_row(1, "test_snapshot")])


def _by_sex(ctx, unit):
    (c,) = unit
    CALLS.append(f"sex:{c.cohort_name}")
    df = ctx.cdm.query_df(
        f"SELECT p.gender_concept_id AS g, count(*) AS n FROM {ctx.cohort_table} c JOIN {ctx.cdm_schema}.person p "
        f"ON p.person_id = c.subject_id WHERE c.cohort_definition_id = {c.cohort_definition_id} GROUP BY 1")
    total = int(df["n"].sum())
    rows = [{"cdm_name": ctx.cdm_name, "group_name": "cohort_name", "group_level": c.cohort_name,
             "variable_name": "Number subjects", "estimate_name": "count", "estimate_type": "integer",
             "estimate_value": str(total)}]
    rows += [{"cdm_name": ctx.cdm_name, "group_name": "cohort_name", "group_level": c.cohort_name,
              "variable_name": "Sex", "variable_level": {8507: "Male", 8532: "Female"}.get(int(g), "None"),
              "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(int(n))}
             for g, n in zip(df["g"], df["n"])]
    return SummarisedResult.from_records(rows, [settings_row(1, "test_sex")])


def _pair(ctx, unit):
    a, b = unit
    CALLS.append(f"pair:{a.cohort_name}:{b.cohort_name}")
    n = ctx.cdm.scalar(
        f"SELECT count(*) FROM (SELECT subject_id FROM {ctx.cohort_table} WHERE cohort_definition_id = "
        f"{a.cohort_definition_id} INTERSECT SELECT subject_id FROM {ctx.cohort_table} WHERE cohort_definition_id = "
        f"{b.cohort_definition_id}) x")
    return SummarisedResult.from_records(
        [{"cdm_name": ctx.cdm_name, "group_name": "cohort_name_reference &&& cohort_name_comparator",
          "group_level": f"{a.cohort_name} &&& {b.cohort_name}", "variable_name": "In both cohorts",
          "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(n)}],
        [settings_row(1, "test_overlap")])


def _empty(ctx, unit):
    CALLS.append("empty")
    return SummarisedResult.from_records([], [settings_row(1, "test_nothing_found")])


@pytest.fixture(autouse=True)
def declared_test_types(monkeypatch):
    """The runner refuses undeclared result types; these test-only ones declare no relations."""
    from optima_common.disclosure import declarations

    for rt in ("test_snapshot", "test_sex", "test_overlap", "test_nothing_found"):
        monkeypatch.setitem(declarations.DECLARATIONS, rt, declarations.no_relations)


SUITE = [Diagnostic("persons", "database", ("test_snapshot",), _persons),
         Diagnostic("by_sex", "cohort", ("test_sex",), _by_sex),
         Diagnostic("pair", "pair", ("test_overlap",), _pair),
         Diagnostic("empty", "database", ("test_nothing_found",), _empty)]


@pytest.fixture
def two_cohorts(tmp_path):
    folder = tmp_path / "defs"
    folder.mkdir()
    shutil.copy(GIB, folder / "gib_adults.json")
    doc = json.loads(GIB.read_text())
    doc["InclusionRules"][0]["expression"]["DemographicCriteriaList"][0]["Age"]["Value"] = 75
    (folder / "gib_old.json").write_text(json.dumps(doc))
    return folder


def _run(url, folder, out, **kw):
    with connect_cdm(url, cdm_schema=kw.pop("schema", None), write_schema=kw.pop("write", None)) as cdm:
        return run_diagnostics(cdm, collect_definitions([folder]), out=out, diagnostics=kw.pop("suite", SUITE),
                               progress=lambda m: None, **kw)


def test_incremental_resumable_deterministic(eunomia_cdm, two_cohorts, tmp_path):
    url, schema, write = eunomia_cdm
    CALLS.clear()
    first = _run(url, two_cohorts, tmp_path / "a.csv", schema=schema, write=write)
    assert (first.computed, first.reused, first.cohorts_built) == (5, 0, 2)
    assert first.line == "diagnostics: 5 computed, 0 reused"
    # nothing changed: no diagnostic query runs, the CSV is byte-identical
    CALLS.clear()
    second = _run(url, two_cohorts, tmp_path / "b.csv", schema=schema, write=write)
    assert (second.computed, second.reused, second.cohorts_built) == (0, 5, 0) and CALLS == []
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # change one cohort: only it (and the pair containing it) is rebuilt and recomputed
    doc = json.loads((two_cohorts / "gib_old.json").read_text())
    doc["InclusionRules"][0]["expression"]["DemographicCriteriaList"][0]["Age"]["Value"] = 60
    (two_cohorts / "gib_old.json").write_text(json.dumps(doc))
    CALLS.clear()
    third = _run(url, two_cohorts, tmp_path / "c.csv", schema=schema, write=write)
    assert (third.computed, third.reused, third.cohorts_built) == (2, 3, 1)
    assert sorted(CALLS) == ["pair:gib_adults:gib_old", "sex:gib_old"]
    # incremental equals from scratch (fresh write schema)
    scratch = _run(url, two_cohorts, tmp_path / "d.csv", schema=schema, write=write + "_fresh")
    assert scratch.computed == 5
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "d.csv").read_bytes()


def test_killed_run_resumes(eunomia_cdm, two_cohorts, tmp_path):
    url, schema, write = eunomia_cdm
    calls = {"n": 0}

    def dies_on_second(ctx, unit):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a killed process
        return _by_sex(ctx, unit)

    crashing = [Diagnostic("by_sex", "cohort", ("test_sex",), dies_on_second)]
    with pytest.raises(KeyboardInterrupt):
        _run(url, two_cohorts, tmp_path / "x.csv", schema=schema, write=write, suite=crashing)
    assert not (tmp_path / "x.csv").exists()
    resumed = _run(url, two_cohorts, tmp_path / "x.csv", schema=schema, write=write,
                   suite=[Diagnostic("by_sex", "cohort", ("test_sex",), _by_sex)])
    assert (resumed.computed, resumed.reused) == (1, 1)


def test_released_csv_is_valid_and_suppressed(eunomia_cdm, two_cohorts, tmp_path):
    url, schema, write = eunomia_cdm
    summary = _run(url, two_cohorts, tmp_path / "r.csv", schema=schema, write=write, min_cell_count=50)
    res = validate_csv(tmp_path / "r.csv")
    assert count_small_cells(res, 50) == 0
    assert set(res.settings["min_cell_count"]) == {"50"}
    # every declared result type has settings, even the one without rows
    assert set(res.settings["result_type"]) == {"test_snapshot", "test_sex", "test_overlap", "test_nothing_found"}
    # one result_id per distinct settings (cohorts share theirs), as omopgenerics binds
    assert len(res.settings) == 4
    raw = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns)[:3] == ["result_id", "cdm_name", "group_name"] and raw.shape[1] == 13
    assert summary.result == res


def test_rerun_with_nothing_changed_reuses_the_release(eunomia_cdm, two_cohorts, tmp_path, monkeypatch):
    from site_agent.diagnostics import release_cache, runner

    url, schema, write = eunomia_cdm
    first = _run(url, two_cohorts, tmp_path / "a.csv", schema=schema, write=write, min_cell_count=10)
    released = []
    real = runner.release_control
    monkeypatch.setattr(runner, "release_control", lambda *a, **k: released.append(1) or real(*a, **k))
    CALLS.clear()
    second = _run(url, two_cohorts, tmp_path / "b.csv", schema=schema, write=write, min_cell_count=10)
    assert released == [] and CALLS == [] and (second.computed, second.reused) == (0, 5)  # no audit, no query
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert second.result == first.result and second.result.to_csv_text() == first.result.to_csv_text()
    pd.testing.assert_frame_equal(second.secondary, first.secondary, check_dtype=False)
    # the release depends on the minimum cell count and on the release code: either change releases anew
    third = _run(url, two_cohorts, tmp_path / "c.csv", schema=schema, write=write, min_cell_count=50)
    assert released == [1] and count_small_cells(validate_csv(tmp_path / "c.csv"), 50) == 0
    monkeypatch.setattr(release_cache, "code_digest", lambda: "another version of the rules")
    fourth = _run(url, two_cohorts, tmp_path / "d.csv", schema=schema, write=write, min_cell_count=10)
    assert released == [1, 1] and fourth.result == first.result and third.result != first.result
    # a suppressed cell stays suppressed in the reused release (read back from the file alone)
    assert count_small_cells(validate_csv(tmp_path / "b.csv"), 10) == 0
