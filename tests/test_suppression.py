"""Min-cell suppression: omopgenerics rules plus the leak and complementary fixes."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from optima_common.results import SummarisedResult
from site_agent.suppression import is_count_estimate, suppress

SET = {"result_id": 1, "result_type": "summarise_characteristics", "package_name": "optima",
       "package_version": "0.1.0"}


def rec(value, variable="number subjects", level=None, name="count", etype="integer",
        strata=("overall", "overall"), cohort="c1"):
    return {"cdm_name": "s", "group_name": "cohort_name", "group_level": cohort,
            "strata_name": strata[0], "strata_level": strata[1], "variable_name": variable,
            "variable_level": level, "estimate_name": name, "estimate_type": etype,
            "estimate_value": None if value is None else str(value)}


def build(records):
    return SummarisedResult.from_records(records, [SET])


def val(res, **kw):
    d = res.data
    m = pd.Series(True, index=d.index)
    for k, v in kw.items():
        m &= d[k].isna() if v is None else d[k] == v
    return d.loc[m, "estimate_value"].item()


def test_is_count_estimate():
    assert all(map(is_count_estimate, ["count", "outcome_count", "count_missing", "Record_Count"]))
    assert not any(map(is_count_estimate, ["percentage", "mean", "incidence_100000_pys"]))


def test_small_counts_and_derived_blanked_zero_kept():
    r = build([rec(50), rec(3, "Sex", "Female"), rec(6.0, "Sex", "Female", "percentage", "percentage"),
               rec(0, "Sex", "Other"), rec(47, "Sex", "Male"), rec(94.0, "Sex", "Male", "percentage", "percentage")])
    out = suppress(r, 5)
    assert val(out, variable_level="Female", estimate_name="count") == "-"
    assert val(out, variable_level="Female", estimate_name="percentage") == "-"
    assert val(out, variable_level="Other", estimate_name="count") == "0"
    # complementary: Male (the only other non-zero part) must go too, or 50-0-47 gives 3
    assert val(out, variable_level="Male", estimate_name="count") == "-"
    assert val(out, variable_level="Male", estimate_name="percentage") == "-"
    assert val(out, variable_name="number subjects") == "50"
    assert set(out.settings["min_cell_count"]) == {"5"}
    assert r.data["estimate_value"].tolist().count("-") == 0  # input untouched


def test_group_leak_closed():
    r = build([rec(3), rec(7, "Condition", "copd"), rec(2, "Condition", "asthma"),
               rec(61.2, "Age", None, "mean", "numeric"), rec(40, cohort="c2"),
               rec(7, "Condition", "copd", cohort="c2")])
    out = suppress(r, 5)
    c1 = out.data[out.data.group_level == "c1"]
    assert set(c1["estimate_value"]) == {"-"}  # omopgenerics would leave the 7 visible
    assert val(out, group_level="c2", variable_level="copd") == "7"


def test_cross_strata_complement():
    r = build([rec(20), rec(3, strata=("sex", "Female")), rec(17, strata=("sex", "Male")),
               rec(12, "Condition", "copd", strata=("sex", "Male"))])
    out = suppress(r, 5)
    d = out.data
    assert (d.loc[d.strata_level == "Female", "estimate_value"] == "-").all()
    # Male's count would give Female = 20 - 17, and Male's breakdown would rebuild Male
    assert (d.loc[d.strata_level == "Male", "estimate_value"] == "-").all()
    assert val(out, strata_level="overall", variable_name="number subjects") == "20"


def test_min_below_two_only_records_setting():
    r = build([rec(1), rec(1, "Sex", "Female")])
    out = suppress(r, 1)
    assert out.data.equals(r.data)
    assert out.settings.loc[0, "min_cell_count"] == "1"


def test_idempotent_and_keeps_larger_threshold():
    r = build([rec(30), rec(3, "Sex", "Female"), rec(8, "Sex", "Male"), rec(19, "Sex", "Unknown")])
    once = suppress(r, 5)
    assert suppress(once, 5) == once
    assert suppress(once, 3).settings.loc[0, "min_cell_count"] == "5"
    assert suppress(r, 10) == suppress(suppress(r, 10), 5)


def _random_table(rng: random.Random):
    records, families = [], []
    for c in range(rng.randint(1, 3)):
        cohort = f"c{c}"
        strata_levels = ["F", "M"] if rng.random() < 0.6 else []
        cats = [f"k{i}" for i in range(rng.randint(2, 5))]
        cells = {(s, k): rng.choice([0, 1, 2, 3, 4, 5, 6, 9, 15, 40]) for s in strata_levels for k in cats}
        if not strata_levels:
            cells = {(None, k): rng.choice([0, 1, 2, 4, 6, 9, 15, 40]) for k in cats}
        over = {k: sum(v for (s, kk), v in cells.items() if kk == k) for k in cats}
        for s in [None, *strata_levels]:
            st = ("overall", "overall") if s is None else ("sex", s)
            counts = over if s is None else {k: cells[(s, k)] for k in cats}
            total = sum(counts.values())
            records.append(rec(total, strata=st, cohort=cohort))
            records += [rec(v, "Category", k, strata=st, cohort=cohort) for k, v in counts.items()]
            families.append([(cohort, st[1], "number subjects", None)]
                            + [(cohort, st[1], "Category", k) for k in cats])
        for k in (cats if strata_levels else []):
            families.append([(cohort, "overall", "Category", k)]
                            + [(cohort, s, "Category", k) for s in strata_levels])
        if strata_levels:
            families.append([(cohort, "overall", "number subjects", None)]
                            + [(cohort, s, "number subjects", None) for s in strata_levels])
    return build(records), families


@pytest.mark.parametrize("seed", range(60))
def test_property_no_single_suppressed_cell_in_any_family(seed):
    rng = random.Random(seed)
    r, families = _random_table(rng)
    mcc = rng.choice([3, 5, 10])
    out = suppress(r, mcc)
    d = out.data[out.data.estimate_name == "count"]
    look = {(g, s, v, None if pd.isna(lvl) else lvl): x for g, s, v, lvl, x in zip(
        d.group_level, d.strata_level, d.variable_name, d.variable_level, d.estimate_value, strict=True)}
    visible = [pd.to_numeric(x) for x in look.values() if x != "-"]
    assert not any(0 < x < mcc for x in visible)
    for fam in families:
        n = sum(look[key] == "-" for key in fam)
        assert n != 1, (seed, fam, [look[k] for k in fam])
    assert suppress(out, mcc) == out
