"""From the attacker's side: only the released genomics CSV, and what its layout says.

A small synthetic site (many small cells). The attacker (written here, importing nothing of the
production audit) tries: strata that add up to their overall row, bounded by linear programming over
all of a table's families at once; percentages times the profiled persons; Fisher's p-value of a
pair inverted for a withheld gene count; the overall mean age minus the released strata. Each attack
also runs on the table *before* the genomics release rules, to show it is not toothless.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog
from scipy.stats import fisher_exact

from optima_common.disclosure import protect
from optima_common.results import SummarisedResult
from site_agent.genomics.profile import run_profile
from site_agent.genomics.synth import generate
from site_agent.suppression import suppress

MIN = 5


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("gattack")
    generate(root / "s", 150, seed=2)
    clin = pd.read_csv(root / "s" / "clinical.csv")
    clin.loc[:1, "race"] = "american indian or alaska native"  # a stratum of two persons
    clin.to_csv(root / "s" / "clinical.csv", index=False)
    run = run_profile([root / "s" / "mutations.maf"], root / "s" / "expression.tsv", root / "s" / "linkage.csv",
                      clinical=root / "s" / "clinical.csv", cdm_name="small")
    path = run.result.to_csv(root / "released.csv")
    released = SummarisedResult.from_csv(path)  # the attacker has the file
    audit_only = protect(run.raw, suppress(run.raw, MIN), MIN).result  # without the genomics rules
    return released, run.raw, audit_only, json.loads((root / "s" / "truth.json").read_text())


def _frame(r: SummarisedResult) -> pd.DataFrame:
    d = r.data.reset_index(drop=True)
    t = d["result_id"].map(dict(zip(r.settings["result_id"], r.settings["result_type"])))
    return d.assign(t=t, v=pd.to_numeric(d["estimate_value"], errors="coerce"), hidden=d["estimate_value"] == "-")


def lp_narrowed(released: SummarisedResult, truth: SummarisedResult) -> list[tuple]:
    """Withheld small counts whose feasible interval excludes some of 1..MIN-1."""
    d, t = _frame(released), _frame(truth)
    c = d[(d["estimate_name"] == "count")]
    rows = list(c.index)
    var = {r: i for i, r in enumerate(r for r in rows if c.at[r, "hidden"])}
    eq_a, eq_b = [], []
    ident = ["t", "group_level", "variable_name", "variable_level", "additional_level"]
    base = c.assign(vl=c["variable_level"].fillna("")).drop(columns="variable_level").rename(columns={"vl": "variable_level"})
    for _, g in base.groupby(ident + ["strata_name"], dropna=False):  # strata levels add up to overall
        if g["strata_name"].iat[0] == "overall":
            continue
        k = g.iloc[0]
        tot = base[(base[ident] == k[ident]).all(axis=1) & (base["strata_name"] == "overall")]
        if len(tot) != 1:
            continue
        _add(eq_a, eq_b, var, c, [(r, 1.0) for r in g.index] + [(tot.index[0], -1.0)])
    ms = base[base["t"] == "molecular_subtype"]
    for _, g in ms.groupby("group_level"):  # subtypes add up to the method's persons
        subj = g[g["variable_name"] == "number subjects"]
        _add(eq_a, eq_b, var, c, [(r, 1.0) for r in g.index if r not in subj.index] + [(subj.index[0], -1.0)])
    if not var:
        return []
    A, b = np.array(eq_a).reshape(-1, len(var)), np.array(eq_b)
    if not len(b):
        A, b = None, None
    n = float(c[(c["t"] == "mutation_frequency") & (c["variable_name"] == "number subjects")]["v"].iat[0])
    n = None if np.isnan(n) else n  # withheld: the attacker has no upper bound
    out = []
    for r, i in var.items():
        true = float(t.at[r, "v"])
        if not 0 < true < MIN:
            continue
        obj = np.zeros(len(var))
        obj[i] = 1
        lo = linprog(obj, A_eq=A, b_eq=b, bounds=(0, n), method="highs").fun
        top = linprog(-obj, A_eq=A, b_eq=b, bounds=(0, n), method="highs")
        hi = np.inf if top.status == 3 else -top.fun  # 3: unbounded
        if lo > 1 + 1e-6 or hi < MIN - 1 - 1e-6:
            out.append((d.at[r, "t"], d.at[r, "strata_level"], d.at[r, "variable_level"], true, lo, hi))
    return out


def _add(A, b, var, c, terms):
    row, const = np.zeros(len(var)), 0.0
    for r, coef in terms:
        if r in var:
            row[var[r]] += coef
        else:
            const -= coef * float(c.at[r, "v"])
    if row.any():
        A.append(row)
        b.append(const)


def test_lp_over_strata_narrows_no_small_count(small):
    released, raw, audit_only, _ = small
    d = _frame(raw)
    assert ((d["estimate_name"] == "count") & d["v"].between(1, MIN - 1)).sum() > 10  # something to protect
    assert lp_narrowed(released, raw) == []
    from optima_common.disclosure import check_release

    assert check_release(released, MIN) == []  # and the coordinator's audit accepts the file
    assert lp_narrowed(suppress(raw, MIN), raw) != []  # plain cell suppression leaks: the attack works


def test_no_percentage_gives_a_withheld_count_back(small):
    released = _frame(small[0])
    pct = released[(released["estimate_name"] == "percentage") & ~released["hidden"]]
    key = ["result_id", "group_name", "group_level", "strata_name", "strata_level", "variable_name",
           "additional_level"]
    cnt = released[released["estimate_name"] == "count"].assign(vl=lambda x: x["variable_level"].fillna(""))
    pct = pct.assign(vl=pct["variable_level"].fillna(""))
    m = pct.merge(cnt, on=key + ["vl"], suffixes=("_p", "_c"))
    assert len(pct) > 20 and len(m) == len(pct)
    assert not m["hidden_c"].any()  # a released percentage always sits next to its released count


def _fisher_inversion(table: SummarisedResult) -> list[tuple]:
    """For each pair with a released p-value and a withheld gene count: the counts k that reproduce the
    p-value (one candidate = recovered; a recovered secondary suppression gives its small neighbours back)."""
    d = _frame(table)
    mf = d[(d["t"] == "mutation_frequency") & (d["estimate_name"] == "count")]
    n = mf.loc[mf["variable_name"] == "number subjects", "v"].iat[0]
    genes = dict(zip(mf.loc[mf["variable_name"] == "gene", "variable_level"],
                     mf.loc[mf["variable_name"] == "gene", "estimate_value"]))
    co = d[d["t"] == "cooccurrence"]
    found = []
    for gl, g in co.groupby("group_level"):
        est = dict(zip(g["estimate_name"], g["estimate_value"]))
        if est.get("p_value", "-") == "-" or est.get("count", "-") == "-":
            continue
        a, b = gl.split(" &&& ")
        both = int(est["count"])
        for hidden_gene, other in ((a, b), (b, a)):
            if genes[hidden_gene] != "-" or genes[other] == "-":
                continue
            m_other = int(genes[other])
            fits = [k for k in range(max(1, both), int(n) - m_other + both + 1)
                    if np.isclose(fisher_exact([[both, k - both], [m_other - both, n - k - m_other + both]]).pvalue,
                                  float(est["p_value"]), rtol=1e-4)]
            found.append((hidden_gene, other, fits))
    return found


def test_fisher_p_values_do_not_give_a_withheld_gene_count_back(small):
    released, raw, audit_only, _ = small
    assert _fisher_inversion(released) == []
    recovered = [f for f in _fisher_inversion(audit_only) if len(f[2]) == 1]
    assert recovered, "the site has a withheld gene in a tested pair: without the rule its count comes back"
    t = _frame(raw)
    true = dict(zip(t.loc[(t["t"] == "mutation_frequency") & (t["estimate_name"] == "count"), "variable_level"],
                    t.loc[(t["t"] == "mutation_frequency") & (t["estimate_name"] == "count"), "v"]))
    assert all(fits[0] == true[gene] for gene, _, fits in recovered)


def test_overall_mean_age_is_withheld_when_a_stratum_is(small):
    released, raw, audit_only, _ = small
    for table, expect_leak in ((released, False), (audit_only, True)):
        d = _frame(table)
        age = d[d["t"] == "age_at_diagnosis"]
        race = age[age["strata_name"] == "race"]
        hidden_strata = race[(race["estimate_name"] == "count") & race["hidden"]]
        overall_mean = age[(age["strata_name"] == "overall") & (age["estimate_name"] == "mean")]["estimate_value"].iat[0]
        assert len(hidden_strata) > 0
        assert (overall_mean != "-") is expect_leak
