"""Population diagnostics on random CDMs (several periods a year, overlapping outcome entries) and
on 62 complete years (the prevalence masks full), against the pandas reference."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from site_agent.cdm.connection import connect_cdm
from site_agent.cdm.ddl import cdm_ddl, results_ddl
from tests.population_reference import D, compare_with_pandas, outcome_def


# ---------- random intervals: several periods a year, overlapping outcome entries ----------
def random_cdm(path: Path, seed: int, first: dt.date = D(2004, 1, 1), last: dt.date = D(2016, 12, 31),
                anchor: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """300 persons with 1-3 observation periods (often two in one calendar year) and 0-4 outcome
    entries each, overlapping one another and the periods' edges (cohort 5), between ``first`` and
    ``last``; ``anchor``: one more person observed from ``first`` to ``last`` (the study period)."""
    rng = np.random.default_rng(seed)
    span = (last - first).days

    def days(n: int) -> int:  # n days of the default 13-year span, scaled to this one
        return round(n * span / 4748)

    persons, obs, outs = [], [], []
    for pid in range(1, 301):
        persons.append((pid, int(rng.choice([8507, 8532, 8507, 8532, 0])), int(rng.integers(first.year - 69, last.year)),
                        None if rng.random() < 0.2 else int(rng.integers(1, 13)),
                        None if rng.random() < 0.2 else int(rng.integers(1, 29))))
        day = first + dt.timedelta(days=int(rng.integers(0, days(2500))))
        for _ in range(int(rng.integers(1, 4))):
            end = day + dt.timedelta(days=int(rng.choice([rng.integers(0, 120), rng.integers(0, days(2000))])))
            if end > last:
                break
            obs.append((pid, day, end))
            day = end + dt.timedelta(days=int(rng.integers(1, 200)))
        for _ in range(int(rng.integers(0, 9))):
            s = first - dt.timedelta(days=214) + dt.timedelta(days=int(rng.integers(0, days(4900))))
            outs.append((pid, s, s + dt.timedelta(days=int(rng.choice([0, rng.integers(0, 60), rng.integers(0, 900)])))))
    if anchor:
        persons.append((301, 8532, first.year - 40, 6, 15))
        obs.append((301, first, last))
    con = duckdb.connect(str(path))
    for s in cdm_ddl("duckdb", "5.4", "main") + results_ddl("results"):
        con.execute(s)
    con.executemany("INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,"
                    " race_concept_id, ethnicity_concept_id) VALUES (?, ?, ?, ?, ?, 0, 0)", persons)
    con.executemany("INSERT INTO observation_period VALUES (?, ?, ?, ?, 32880)",
                    [(i, *o) for i, o in enumerate(obs, start=1)])
    con.executemany("INSERT INTO results.cohort VALUES (5, ?, ?, ?)", outs)
    con.close()
    person = pd.DataFrame(persons, columns=["person_id", "gender_concept_id", "year_of_birth", "month_of_birth",
                                            "day_of_birth"])
    op = pd.DataFrame(obs, columns=["person_id", "observation_period_start_date", "observation_period_end_date"])
    cohort = pd.DataFrame(outs, columns=["subject_id", "cohort_start_date", "cohort_end_date"])
    for df in (op, cohort):
        for c in df.columns[1:]:
            df[c] = pd.to_datetime(df[c])
    return person, op, cohort


@pytest.mark.parametrize("mask_years", [62, 2])  # outcome years as bit masks; too many years for them: islands
@pytest.mark.parametrize("seed", [3, 11])
def test_random_overlapping_intervals_match_pandas(tmp_path, seed, mask_years, monkeypatch):
    """Interval arithmetic (no year expansion) and merged outcome ranges against plain pandas."""
    from site_agent.diagnostics import prevalence

    monkeypatch.setattr(prevalence, "MASK_YEARS", mask_years)
    person, op, cohort = random_cdm(tmp_path / "random.duckdb", seed)
    # several periods of one person within a calendar year, and outcome entries overlapping each other
    op_years = op.assign(y=op["observation_period_start_date"].dt.year)
    assert op_years.duplicated(["person_id", "y"]).any()
    c = cohort.sort_values(["subject_id", "cohort_start_date"])
    assert ((c["subject_id"] == c["subject_id"].shift()) & (c["cohort_start_date"] <= c["cohort_end_date"].shift())).any()
    start, end = op["observation_period_start_date"].min().date(), op["observation_period_end_date"].max().date()
    with connect_cdm(str(tmp_path / "random.duckdb")) as cdm:
        compare_with_pandas(cdm, person, op, cohort, outcome_def(), start, end,
                             years=list(range(start.year + 1, end.year)))


@pytest.mark.parametrize("mask_years", [62, 61])  # exactly as many complete years as the masks hold; one too many
def test_sixty_two_complete_years_fill_the_mask_and_match_pandas(tmp_path, mask_years, monkeypatch):
    """1950-2011: 62 complete years, bits 0 to 61 of the prevalence masks (the sign bit stays clear);
    the first, middle and last years against pandas, by masks and by islands."""
    from site_agent.diagnostics import prevalence

    monkeypatch.setattr(prevalence, "MASK_YEARS", mask_years)
    person, op, cohort = random_cdm(tmp_path / "long.duckdb", 5, first=D(1950, 1, 1), last=D(2011, 12, 31),
                                     anchor=True)
    assert op["observation_period_start_date"].min().date() == D(1950, 1, 1)
    assert op["observation_period_end_date"].max().date() == D(2011, 12, 31)
    with connect_cdm(str(tmp_path / "long.duckdb")) as cdm:
        compare_with_pandas(cdm, person, op, cohort, outcome_def(), D(1950, 1, 1), D(2011, 12, 31),
                             years=[1950, 1951, 1980, 2010, 2011],
                             strata=[(0, 150, "Both", 0), (18, 64, "Male", 365), (65, 150, "Female", 0)])
