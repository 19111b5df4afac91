"""From the attacker's side: the released NLP files only (``nlp metastasis`` results.csv, a study
bundle with ``nlp_metastasis`` and the breast_cancer cohort count), every relation a reader of their
layout can see, bounded by linear programming (SciPy's linprog, HiGHS) over all of them at once.

The attacker (written here, importing nothing of ``optima_common.disclosure``) reads:
* reports read = kept + every filtered reason;
* per site group: TP + FP = NLP positive, TP + FN = structured positive, TP + FP + FN <= persons
  evaluated, NLP/structured positive <= persons; a site's NLP positive, structured positive and TP
  at most those of ``any`` (a person metastatic at the liver is metastatic);
* persons evaluated <= reports kept (each has one), and <= the breast_cancer cohort's subjects;
* a released precision, recall or F1 turned back into an equation on TP (precision x NLP positive,
  recall x structured positive, F1 x (NLP + structured positive) / 2);
* person counts that are differences of visible ones (persons minus positives, TN, any minus a site).
Small synthetic sites (a few hundred to a few thousand persons with reports); the truth is the same
analysis unsuppressed. Each attack also runs on plain cell suppression, to show it is not toothless.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog

from optima_common.results import SummarisedResult
from site_agent.cdm import connect_cdm
from site_agent.cdm.synth import generate_site

pytest.importorskip("medspacy", reason="the nlp extra is not installed: pip install -e '.[nlp]'")

MIN = 5
SITES = [("nlp_tiny", "breast-centre", 400, 31), ("nlp_small", "breast-centre", 1200, 32),
         ("nlp_onc", "oncology", 2500, 33)]


def _frame(r: SummarisedResult) -> pd.DataFrame:
    d = r.data.reset_index(drop=True)
    t = d["result_id"].map(dict(zip(r.settings["result_id"], r.settings["result_type"])))
    return d.assign(t=t, v=pd.to_numeric(d["estimate_value"], errors="coerce"), hidden=d["estimate_value"] == "-",
                    row=np.arange(len(d)))


def relations(d: pd.DataFrame) -> tuple[list[dict], list[dict], list[tuple[int, dict]]]:
    """(equalities, inequalities <= 0, person-count differences) over row ids, from the layout only."""
    eq, le, diffs = [], [], []
    rep = d[(d["t"] == "nlp_report_counts") & (d["variable_name"] == "reports")]
    read = rep[rep["variable_level"] == "read"]["row"].tolist()
    kept = rep[rep["variable_level"] == "kept"]["row"].tolist()
    if read:
        eq.append({read[0]: 1.0} | {r: -1.0 for r in rep[rep["variable_level"] != "read"]["row"]})
    a = d[d["t"] == "nlp_metastasis_agreement"]
    n_rows = a[a["variable_name"] == "number subjects"]["row"].tolist()
    n = n_rows[0] if n_rows else None
    if n is not None and kept:
        le.append({n: 1.0, kept[0]: -1.0})
    breast = d[(d["t"] == "summarise_cohort_count") & (d["group_level"] == "breast_cancer")
               & (d["variable_name"] == "Number subjects")]["row"].tolist()
    if n is not None and breast:
        le.append({n: 1.0, breast[0]: -1.0})
        diffs.append((breast[0], {n: 1.0}))
    cells = {}
    for site, g in a[a["group_name"] == "metastasis_site"].groupby("group_level"):
        c = {e if v == "agreement" else v: r for v, e, r in zip(g["variable_name"], g["estimate_name"], g["row"])}
        cells[site] = c
        tp, fp, fn, pos, st = (c.get(k) for k in ("tp_count", "fp_count", "fn_count", "nlp positive",
                                                  "structured positive"))
        eq.append({pos: 1.0, tp: -1.0, fp: -1.0})
        eq.append({st: 1.0, tp: -1.0, fn: -1.0})
        if n is not None:
            le.append({tp: 1.0, fp: 1.0, fn: 1.0, n: -1.0})
            le.append({pos: 1.0, n: -1.0})
            le.append({st: 1.0, n: -1.0})
            diffs += [(n, {pos: 1.0}), (n, {st: 1.0}), (n, {tp: 1.0, fp: 1.0, fn: 1.0})]
        # released rates are equations on TP: precision*(TP+FP) = TP, recall*(TP+FN) = TP, F1*(pos+st) = 2 TP
        val = dict(zip(g["estimate_name"], g["v"]))
        n_val = float(d.at[n, "v"]) if n is not None and not d.at[n, "hidden"] else 1e4
        for rate, den in (("precision", {pos: 1.0}), ("recall", {st: 1.0}), ("f1", {pos: 0.5, st: 0.5})):
            x = val.get(rate)
            if x is not None and not np.isnan(x):
                r = {k: x * w for k, w in den.items()}
                r[tp] = r.get(tp, 0.0) - 1.0
                # the rate is released to 4 decimals: |rate x denominator - TP| <= 5e-5 x denominator
                eq.append(("approx", r, 5e-5 * n_val + 1e-9))
    if "any" in cells:
        for site, c in cells.items():
            if site == "any":
                continue
            for k in ("nlp positive", "structured positive", "tp_count"):
                le.append({c[k]: 1.0, cells["any"][k]: -1.0})
                diffs.append((cells["any"][k], {c[k]: 1.0}))
    return eq, le, diffs


def _bounds(d: pd.DataFrame, rows: list[int]) -> list[dict]:
    """Each withheld count's feasible [lo, hi] by LP within its group of linked withheld cells."""
    eq, le, _ = relations(d)
    hidden = d["hidden"].to_numpy() & d["estimate_name"].str.contains("count").to_numpy()
    val = d["v"].to_numpy()
    rels = [(r[1], r[2]) if isinstance(r, tuple) else (r, "eq") for r in eq] + [(r, "le") for r in le]
    parent: dict[int, int] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for r, _kind in rels:
        for x, y in pairwise([k for k in r if hidden[k]]):
            parent[find(x)] = find(y)
    members = defaultdict(list)
    for k in np.flatnonzero(hidden):
        members[find(int(k))].append(int(k))
    out = []
    for m in rows:
        group = members[find(m)]
        idx = {k: i for i, k in enumerate(group)}
        A_eq, b_eq, A_ub, b_ub = [], [], [], []
        for r, kind in rels:
            if not any(hidden[k] and k in idx for k in r):
                continue
            row = np.zeros(len(group))
            const = 0.0
            for k, coef in r.items():
                if hidden[k]:
                    row[idx[k]] += coef
                else:
                    const += coef * val[k]
            if kind == "eq":
                A_eq.append(row)
                b_eq.append(-const)
            elif kind == "le":
                A_ub.append(row)
                b_ub.append(-const)
            else:  # kind is the tolerance of a rate's equation
                tol = kind
                A_ub += [row, -row]
                b_ub += [-const + tol, const + tol]
        kw = {"A_eq": np.array(A_eq) if A_eq else None, "b_eq": b_eq or None,
              "A_ub": np.array(A_ub) if A_ub else None, "b_ub": b_ub or None,
              "bounds": [(0, None)] * len(group), "method": "highs"}
        obj = np.zeros(len(group))
        obj[idx[m]] = 1
        lo, hi = linprog(obj, **kw), linprog(-obj, **kw)
        assert lo.status in (0, 3) and hi.status in (0, 3), (lo.message, hi.message)
        out.append({"row": m, "lo": np.ceil(lo.fun - 1e-6) if lo.status == 0 else 0.0,
                    "hi": np.inf if hi.status == 3 else np.floor(-hi.fun + 1e-6)})
    return out


def narrowed(released: SummarisedResult, truth: SummarisedResult) -> list[dict]:
    """Withheld counts whose truth is 1..MIN-1 and whose feasible interval leaves out some of 1..MIN-1,
    and visible person-count differences in 1..MIN-1."""
    d, t = _frame(released), _frame(truth)
    assert (d[["t", "group_level", "variable_name", "variable_level", "estimate_name"]].fillna("").to_numpy()
            == t[["t", "group_level", "variable_name", "variable_level", "estimate_name"]].fillna("").to_numpy()).all()
    true = t["v"].to_numpy()
    hidden = d["hidden"].to_numpy() & d["estimate_name"].str.contains("count").to_numpy()
    small = [int(k) for k in np.flatnonzero(hidden) if 0 < true[k] < MIN]
    leaks = [dict(b, kind="withheld", truth=true[b["row"]], what=tuple(d.loc[b["row"], ["group_level", "variable_name",
                                                                                          "estimate_name"]]))
             for b in _bounds(d, small) if b["lo"] > 1 or b["hi"] < MIN - 1]
    val = d["v"].to_numpy()
    for total, parts in relations(d)[2]:
        if hidden[total] or any(hidden[p] for p in parts):
            continue
        diff = val[total] - sum(c * val[p] for p, c in parts.items())
        if 0 < diff < MIN:
            leaks.append({"kind": "difference", "total": d.loc[total, ["group_level", "variable_name"]].tolist(),
                          "parts": [tuple(d.loc[p, ["group_level", "estimate_name"]]) for p in parts], "value": diff})
    return leaks


def pinned_small(released: SummarisedResult) -> list[dict]:
    """Without any truth: withheld counts the LP pins to a small non-zero number."""
    d = _frame(released)
    hidden = d["hidden"].to_numpy() & d["estimate_name"].str.contains("count").to_numpy()
    return [b for b in _bounds(d, [int(k) for k in np.flatnonzero(hidden)])
            if (b["lo"] >= 1 and b["hi"] <= MIN - 1) or 0 < b["hi"] < MIN - 1]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from site_agent.nlp.cdm_run import nlp_metastasis_result

    root = tmp_path_factory.mktemp("nlp_attack")
    out = {}
    for name, profile, n, seed in SITES:
        cdm = root / f"{name}.duckdb"
        generate_site(cdm, persons=n, site=name, profile=profile, seed=seed, notes=True)
        with connect_cdm(f"duckdb:///{cdm}", write_schema="results") as c:
            truth, summary = nlp_metastasis_result(c, name, 1)
        out[name] = (cdm, truth, summary)
    return root, out


@pytest.mark.parametrize("name", [s[0] for s in SITES])
def test_released_nlp_csv_narrows_no_small_count(sites, name):
    """The CSV ``site-agent nlp metastasis`` writes (the command itself, then only its file is read)."""
    from site_agent.cli import main

    root, out = sites
    cdm, truth, summary = out[name]
    assert summary["persons"] >= 40  # persons with reports: small, but something to evaluate
    rc = main(["nlp", "metastasis", "--cdm", f"duckdb:///{cdm}", "--out", str(root / name), "--cdm-name", name])
    assert rc == 0
    released = SummarisedResult.from_csv(root / name / "results.csv")
    t = truth.data
    small = t["estimate_name"].str.contains("count") & t["estimate_value"].isin([str(i) for i in range(1, MIN)])
    assert small.sum() > 0  # something to protect
    assert narrowed(released, truth) == []
    assert pinned_small(released) == []


def test_attacker_is_not_toothless(sites):
    """On plain cell suppression of the same tables the same attacker recovers small counts."""
    from site_agent.suppression import suppress

    _, out = sites
    found = [leak for name in out for leak in narrowed(suppress(out[name][1], MIN), out[name][1])]
    assert found, "plain suppression should leak through the ties"
    assert {"withheld", "difference"} & {leak["kind"] for leak in found}


def test_study_bundle_with_nlp_and_the_breast_cohort(sites, tmp_path):
    """A signed manifest (cohort_counts on breast_cancer + nlp_metastasis) answered by run-manifest:
    the attacker reads the bundle's CSV, where persons evaluated also sit under the cohort's subjects."""
    from optima_common.bundle import read_bundle, write_manifest
    from site_agent.cli import main
    from tests.factories import make_keys, make_manifest, write_site_config

    _, out = sites
    cdm, truth, _ = out["nlp_small"]
    keys = make_keys(tmp_path / "keys")
    cfg = write_site_config(tmp_path, keys, cdm_url=f"duckdb:///{cdm}")
    cfg.write_text(cfg.read_text().replace('allowed_analyses = ["cohort_counts", "diagnostics"]',
                                           'allowed_analyses = ["cohort_counts", "nlp_metastasis"]'))
    m = make_manifest(keys, cohorts=("breast_cancer",), analyses=("cohort_counts", "nlp_metastasis"))
    rc = main(["run-manifest", str(write_manifest(m, tmp_path / "m.json")), "--config", str(cfg),
               "--out", str(tmp_path / "b.bundle")])
    assert rc == 0
    released = SummarisedResult.from_csv_text(read_bundle(tmp_path / "b.bundle").results_csv)
    d = _frame(released)
    assert {"nlp_report_counts", "nlp_metastasis_agreement", "summarise_cohort_count"} <= set(d["t"])
    assert pinned_small(released) == []
    # the NLP rows against their truth (same rows, same order within the two NLP result types)
    nlp_types = ["nlp_report_counts", "nlp_metastasis_agreement"]
    keep = d["t"].isin(nlp_types).to_numpy()
    part = SummarisedResult(data=released.data[keep].reset_index(drop=True), settings=released.settings)
    assert narrowed(part, truth) == []
    _, le, _ = relations(d)
    assert any(len(r) == 2 and d.loc[list(r)[1], "t"] == "summarise_cohort_count" for r in le)
