"""Rounded releases: risk tables from rounded cumulative counts, and ``round_counts_to``.

Expectations are worked out by hand (written before running) and the attack is the independent
attacker of benchmarks/attacker.py (SciPy linprog over the relations it reads off the table, with
the rounding's preimage as bounds), not the production audit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.attacker import narrowed
from optima_common.disclosure import check_release, protect
from optima_common.disclosure.rounding import preimage, round_counts
from site_agent.analyses.rounding import round_risk_table
from site_agent.analyses.survival import km_from_table, summarise_survival
from site_agent.suppression import suppress
from tests.test_disclosure import make, row


def test_risk_table_from_rounded_cumulative_counts_by_hand():
    t = pd.DataFrame({"time": [0, 30, 60, 90], "n_risk": [12, 12, 9, 3], "n_event": [0, 2, 5, 1],
                      "n_censor": [0, 1, 1, 2]})
    r = round_risk_table(t, 5)
    # by hand: N 12 -> 10; left by t: 0, 3, 9, 12 -> 0, 5, 10, 10 (capped at N, all left at the end);
    # events by t: 0, 2, 7, 8 -> 0, 0, 5, 10, but at most what left: 0, 0, 5, 5
    assert r["n_risk"].tolist() == [10, 10, 5, 0]
    assert r["n_event"].tolist() == [0, 0, 5, 0]
    assert r["n_censor"].tolist() == [0, 5, 0, 0]
    # every count a multiple of 5, the chain exact on the released numbers
    assert (r[["n_risk", "n_event", "n_censor"]].to_numpy() % 5 == 0).all()
    n, d, c = r["n_risk"].to_numpy(), r["n_event"].to_numpy(), r["n_censor"].to_numpy()
    assert (n[1:] == n[:-1] - d[:-1] - c[:-1]).all()
    # the curve is the textbook estimate of the rounded table: S(60) = 1 - 5/5 = 0
    assert km_from_table(r, estimator="kaplan_meier")["survival"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_rounded_survival_release_has_no_small_count_and_says_so():
    rng = np.random.default_rng(4)
    strata = {"overall": pd.DataFrame({"time": rng.integers(1, 700, 37), "event": rng.integers(0, 2, 37)})}
    res = summarise_survival("s", "t", "death", strata, [0, 90, 180, 365, 730], count_rounding=5)
    ev = res.data[res.data["result_id"] == 2]
    v = pd.to_numeric(ev["estimate_value"])
    assert (v % 5 == 0).all() and not ((v > 0) & (v < 5)).any()
    assert set(res.settings["count_rounding"].dropna()) == {"cumulative_5"}
    summary = res.data[(res.data["result_id"] == 3) & (res.data["estimate_name"] == "number_records_count")]
    assert summary["estimate_value"].tolist() == ["37"]  # the stratum's exact size (released elsewhere too)


def _sex_table(records, levels):
    rows = [row(1, "cohort_name", "c", "Number records", records), row(1, "cohort_name", "c", "Number subjects", records)]
    for level, n in levels.items():
        rows += [{**row(1, "cohort_name", "c", "Sex", n), "variable_level": level},
                 {**row(1, "cohort_name", "c", "Sex", round(100 * n / records, 4), "percentage"),
                  "variable_level": level, "estimate_type": "percentage"}]
    return make(rows, {1: "summarise_characteristics"})


def test_preimage_of_nearest_rounding():
    lo, hi = preimage(np.array([0, 5, 20, 10]), np.array([5, 5, 5, 10]), 5)
    # 5 <- 5..7 (1..4 were suppressed first), 20 <- 18..22, 10 (base 10) <- 5..14
    assert lo.tolist() == [0, 5, 18, 5] and hi.tolist() == [0, 7, 22, 14]


def test_round_counts_to_five_attacker_side():
    truth = _sex_table(21, {"Female": 3, "Male": 12, "Unknown": 6})
    primary = suppress(truth, 5)
    # exact counts: Female = 21 - 12 - 6 = 3 by subtraction unless more is withheld
    exact = protect(truth, primary, 5)
    assert narrowed(exact.result, truth, 5) == []
    # primary suppression withholds Female and the next smallest level (Unknown); rounded to 5:
    # records 21 -> 20 (18..22), Male 12 -> 10 (8..12): Female + Unknown lies in 6..14
    rounded = round_counts(primary, 5, 5)
    counts = rounded.data[rounded.data["estimate_name"] == "count"]["estimate_value"].tolist()
    assert counts == ["20", "20", "-", "10", "-"]
    pct = rounded.data[rounded.data["estimate_name"] == "percentage"]["estimate_value"].tolist()
    assert pct == ["-", "50", "-"]  # recomputed from the rounded counts (10 / 20)
    prot = protect(truth, rounded, 5)
    assert prot.secondary == {}  # the rounding already keeps 1..4 open
    assert narrowed(prot.result, truth, 5) == []
    assert check_release(prot.result, 5) == []
    assert set(prot.result.settings["count_rounding"]) == {"nearest_5"}


def test_horizon_counts_are_read_off_the_rounded_tables_attacker_side():
    """Before: "deaths within 12 months" was exact beside a risk table rounded cumulatively, so a
    reader had the cumulative deaths at day 365 exactly (and, against the table's rounded step
    before it, the deaths of a grid interval to within the rounding band). Now every "within X"
    horizon (X a grid time) is the released table's own events up to X: the attacker who sums the
    released events finds the horizon count and nothing more; the exact count is not released."""
    from site_agent.analyses.outcomes import summarise_outcomes

    rng = np.random.default_rng(7)
    grid = [0, 91, 183, 274, 365, 548, 730]
    n = 43
    death = rng.integers(1, 900, n).astype(float)
    fu = rng.integers(100, 1000, n).astype(float)
    prog = np.where(rng.random(n) < 0.5, rng.integers(1, 800, n), np.nan)
    d = np.where(death <= fu, death, np.nan)
    pats = pd.DataFrame({"time_to_progression": prog, "time_to_death": d, "followup_end": fu})
    strata = {"overall": pats}
    windows = [("within 6 months", "within", 183), ("within 12 months", "within", 365),
               ("after 3 months", "after", 91), ("within 200 days", "within", 200)]
    surv = summarise_survival("s", "t", "death",
                              {"overall": pd.DataFrame({"time": np.where(np.isnan(d), fu, d),
                                                        "event": (~np.isnan(d)).astype(int)})},
                              grid, count_rounding=5)
    out = summarise_outcomes("s", "t", strata, grid, windows=windows, count_rounding=5, death_name="death")
    assert set(out.settings["count_rounding"]) == {"cumulative_5"}
    ev = surv.data[(surv.data["result_id"] == 2) & (surv.data["estimate_name"] == "n_events_count")]
    released_cum = dict(zip(pd.to_numeric(ev["additional_level"]), pd.to_numeric(ev["estimate_value"]).cumsum()))
    h = out.data[(out.data["result_id"] == 1) & (out.data["estimate_name"] == "count")
                 & (out.data["variable_name"] == "death")].set_index("variable_level")["estimate_value"].astype(int)
    true_within = {x: int(np.sum(d <= x)) for x in (183, 365)}
    # the attacker's sum of the released events is the horizon count: nothing beyond the table
    assert h["within 6 months"] == released_cum[183] and h["within 12 months"] == released_cum[365]
    # and it is the rounded count, within the band of the true one (not the exact count)
    for label, x in (("within 6 months", 183), ("within 12 months", 365)):
        assert h[label] % 5 == 0 and abs(h[label] - true_within[x]) <= 2
    assert any(h[lbl] != true_within[x] for lbl, x in (("within 6 months", 183), ("within 12 months", 365)))
    # a window off the grid: nearest multiple of 5, between the table's values around it
    assert released_cum[183] <= h["within 200 days"] <= released_cum[274] and h["within 200 days"] % 5 == 0
    # "after 3 months": its population is the rounded table's at-risk count at the next grid time
    pop = out.data[(out.data["variable_name"] == "death") & (out.data["variable_level"] == "after 3 months")
                   & (out.data["estimate_name"] == "population_count")]["estimate_value"].astype(int).iat[0]
    nr = surv.data[(surv.data["result_id"] == 2) & (surv.data["estimate_name"] == "n_risk_count")
                   & (surv.data["additional_level"] == "183")]["estimate_value"].astype(int).iat[0]
    assert pop == min(nr, n)
    # no count between 1 and 4 anywhere in the horizons; percentages from the released numbers
    cnt = pd.to_numeric(out.data.loc[out.data["estimate_name"].str.contains("count"), "estimate_value"])
    assert not ((cnt > 0) & (cnt < 5)).any()
    pct = out.data[(out.data["variable_name"] == "death") & (out.data["variable_level"] == "within 12 months")
                   & (out.data["estimate_name"] == "percentage")]["estimate_value"].astype(float).iat[0]
    assert pct == pytest.approx(100 * h["within 12 months"] / n, rel=1e-6)
