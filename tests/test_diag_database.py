"""Database diagnostics (OmopSketch layouts) against independent computations.

The snapshot is checked against ``describe_cdm`` and direct queries; the observation
period summary against a plain pandas/numpy implementation over the (small)
observation_period table, with numpy's ``method="linear"`` percentile (R type 7, the same
definition as DuckDB ``quantile_cont`` / PostgreSQL ``percentile_cont``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from optima_common.results import SummarisedResult
from site_agent.cdm import connect_cdm
from site_agent.cdm.check import describe_cdm
from site_agent.diagnostics import database
from site_agent.diagnostics.base import DiagnosticContext

QUANTS = {"q05": 5, "q25": 25, "median": 50, "q75": 75, "q95": 95}


def _ctx(cdm) -> DiagnosticContext:
    return DiagnosticContext(cdm=cdm, cdm_name="test_cdm", cohorts=())


def _get(res: SummarisedResult, **keys) -> pd.DataFrame:
    d = res.data
    for k, v in keys.items():
        d = d[d[k] == v]
    return d


def _value(res: SummarisedResult, **keys) -> str | None:
    d = _get(res, **keys)
    assert len(d) == 1, f"expected one row for {keys}, got {len(d)}"
    return d.iloc[0]["estimate_value"]


@pytest.fixture
def synth_cdm(synth_site, tmp_path):
    path = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, path)
    with connect_cdm(str(path), write_schema="results") as cdm:
        yield cdm


def test_ordinal_labels():
    labels = [database.ordinal_label(n) for n in (1, 2, 3, 4, 10, 11, 12, 13, 21, 22, 23, 101, 111, 112)]
    assert labels == ["1st", "2nd", "3rd", "4th", "10th", "11th", "12th", "13th", "21st", "22nd", "23rd",
                      "101st", "111th", "112th"]


def test_number_format_matches_r():
    assert database.fmt_number(3.0) == "3"
    assert database.fmt_number(100 / 3) == "33.33333333"  # 10 significant digits: see base.fmt_float
    assert database.fmt_number(0.0381900) == "0.03819"
    assert database.fmt_number(None) is None and database.fmt_number(float("nan")) is None
    assert database.fmt_number(-2) == "-2"


def test_registered():
    names = {d.name: d for d in database.DIAGNOSTICS}
    assert names["omop_snapshot"].result_types == ("summarise_omop_snapshot",)
    assert names["observation_period"].result_types == ("summarise_observation_period",)
    assert all(d.scope == "database" for d in database.DIAGNOSTICS)


def test_snapshot_matches_describe_cdm(eunomia_cdm):
    url, schema, write = eunomia_cdm
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        report = describe_cdm(cdm)
        src = cdm.query_df(f"SELECT * FROM {schema}.cdm_source")
        res = database.summarise_omop_snapshot(_ctx(cdm))
    assert list(res.settings["result_type"]) == ["summarise_omop_snapshot"]
    assert res.settings.iloc[0]["package_name"] == "optima-federated"  # this program, with its own version
    assert res.settings.iloc[0]["result_layout"] == "OmopSketch"  # the R layout it follows
    assert set(res.data["cdm_name"]) == {"test_cdm"}
    assert res.data["variable_level"].isna().all()
    assert _value(res, variable_name="general", estimate_name="person_count") == str(report.persons)
    # OmopSketch writes the person count here too (numberRecords(cdm$person)), not the periods
    assert _value(res, variable_name="observation_period", estimate_name="count") == str(report.persons)
    assert _value(res, variable_name="observation_period", estimate_name="start_date") == report.observation_start
    assert _value(res, variable_name="observation_period", estimate_name="end_date") == report.observation_end
    assert _value(res, variable_name="general", estimate_name="vocabulary_version") == report.vocabulary_version
    assert _value(res, variable_name="cdm", estimate_name="source_name") == report.cdm_source_name
    expected_version = "5.4" if "5.4" in (report.cdm_version or "") else "5.3"
    assert _value(res, variable_name="cdm", estimate_name="version") == expected_version
    assert _value(res, variable_name="cdm_source", estimate_name="source_type") == cdm.dialect
    if len(src) == 1 and "cdm_holder" in src.columns and pd.notna(src.iloc[0]["cdm_holder"]):
        assert _value(res, variable_name="cdm", estimate_name="holder_name") == str(src.iloc[0]["cdm_holder"])
    types = dict(zip(res.data["estimate_name"] + "/" + res.data["variable_name"], res.data["estimate_type"]))
    assert types["person_count/general"] == "integer" and types["start_date/observation_period"] == "date"


def _expected_obs(op: pd.DataFrame, persons: set[int]) -> dict[str, dict[str, dict[str, float]]]:
    """OmopSketch's observation period summary, from the definition, in pandas + numpy."""
    op = op[op["person_id"].isin(persons)].copy()
    op["s"] = pd.to_datetime(op["observation_period_start_date"])
    op["e"] = pd.to_datetime(op["observation_period_end_date"])
    op = op.sort_values(["person_id", "s", "e"]).reset_index(drop=True)
    op["ordinal"] = op.groupby("person_id").cumcount() + 1
    op["next_s"] = op.groupby("person_id")["s"].shift(-1)
    op["duration"] = (op["e"] - op["s"]).dt.days + 1
    op["next_obs"] = (op["next_s"] - op["e"]).dt.days

    def dist(x: pd.Series) -> dict[str, float]:
        v = x.dropna().to_numpy(dtype=float)
        if len(v) == 0:
            return {}
        out = {"mean": v.mean(), "sd": v.std(ddof=1) if len(v) > 1 else np.nan, "min": v.min(), "max": v.max()}
        out.update({k: np.percentile(v, q, method="linear") for k, q in QUANTS.items()})
        return out

    groups = {"all": op}
    for k, sub in op.groupby("ordinal"):
        groups[database.ordinal_label(int(k))] = sub
    exp: dict[str, dict[str, dict[str, float]]] = {}
    for level, sub in groups.items():
        exp[level] = {"Number subjects": {"count": sub["person_id"].nunique()},
                      "Duration in days": dist(sub["duration"]),
                      "Days to next observation period": dist(sub["next_obs"])}
    exp["all"]["Number records"] = {"count": len(op)}
    exp["all"]["Records per person"] = dist(op.groupby("person_id").size())
    return exp


def _check_obs(res: SummarisedResult, exp: dict, any_next: bool) -> None:
    assert list(res.settings["result_type"]) == ["summarise_observation_period"]
    assert set(res.data["group_name"]) == {"observation_period_ordinal"}
    assert set(res.data["group_level"]) == set(exp)
    checked = 0
    for level, variables in exp.items():
        for var, ests in variables.items():
            got = _get(res, group_level=level, variable_name=var)
            if var == "Days to next observation period" and not any_next:
                assert got.empty
                continue
            if not ests:  # no value for this ordinal: NA estimates, as in OmopSketch
                assert len(got) and got["estimate_value"].isna().all()
                continue
            assert set(got["estimate_name"]) == set(ests), (level, var)
            for est, want in ests.items():
                row = got[got["estimate_name"] == est].iloc[0]
                if est in ("count", "min", "max"):
                    assert row["estimate_type"] == "integer" and row["estimate_value"] == str(int(want)), (level, var, est)
                elif np.isnan(want):
                    assert row["estimate_value"] is None or pd.isna(row["estimate_value"])
                else:
                    assert float(row["estimate_value"]) == pytest.approx(want, rel=1e-9, abs=1e-9), (level, var, est)
                checked += 1
    assert checked > 20
    assert _get(res, variable_name="Number records", group_level="1st").empty
    assert _get(res, variable_name="Records per person", group_level="1st").empty


def test_observation_period_eunomia(eunomia_cdm):
    url, schema, write = eunomia_cdm
    with connect_cdm(url, cdm_schema=schema, write_schema=write) as cdm:
        op = cdm.query_df(f"SELECT person_id, observation_period_start_date, observation_period_end_date "
                          f"FROM {schema}.observation_period")
        persons = set(cdm.query_df(f"SELECT person_id FROM {schema}.person")["person_id"])
        res = database.summarise_observation_period(_ctx(cdm))
    exp = _expected_obs(op, persons)
    any_next = bool(exp["all"]["Days to next observation period"])
    _check_obs(res, exp, any_next)
    starts = pd.to_datetime(op.loc[op["person_id"].isin(persons), "observation_period_start_date"])
    assert res.settings.iloc[0]["study_period_start"] == starts.min().strftime("%Y-%m-%d")


def test_observation_period_synthetic_several_periods(synth_cdm):
    """The synthetic site has people with two periods: ordinals and gaps are exercised."""
    op = synth_cdm.query_df("SELECT person_id, observation_period_start_date, observation_period_end_date "
                            "FROM main.observation_period")
    persons = set(synth_cdm.query_df("SELECT person_id FROM main.person")["person_id"])
    res = database.summarise_observation_period(_ctx(synth_cdm))
    exp = _expected_obs(op, persons)
    assert "2nd" in exp and exp["all"]["Days to next observation period"]
    _check_obs(res, exp, any_next=True)
    assert _value(res, group_level="all", variable_name="Number records", estimate_name="count") == str(len(op))


def test_observation_period_drops_orphans_and_empty(tmp_path, synth_site):
    """Periods of persons missing from person are ignored; an empty table gives settings only."""
    path = tmp_path / "site.duckdb"
    shutil.copy(synth_site.out, path)
    with connect_cdm(str(path), write_schema="results") as cdm:
        with cdm.transaction() as script:
            script.execute("INSERT INTO main.observation_period (observation_period_id, person_id, "
                           "observation_period_start_date, observation_period_end_date, period_type_concept_id) "
                           "VALUES (999999999, 999999999, DATE '2001-01-01', DATE '2001-12-31', 32880)")
        n_op = int(cdm.scalar("SELECT count(*) FROM main.observation_period"))
        res = database.summarise_observation_period(_ctx(cdm))
        assert _value(res, group_level="all", variable_name="Number records", estimate_name="count") == str(n_op - 1)
        with cdm.transaction() as script:
            script.execute("DELETE FROM main.observation_period")
        empty = database.summarise_observation_period(_ctx(cdm))
        snap = database.summarise_omop_snapshot(_ctx(cdm))
    assert len(empty) == 0 and list(empty.settings["result_type"]) == ["summarise_observation_period"]
    assert pd.isna(_value(snap, variable_name="observation_period", estimate_name="start_date"))
