"""The interval solver (optima_common/disclosure/solve.py) against SciPy's linprog, one LP per end.

Random two-way tables (row totals, column totals, grand total: the relations a released count
table carries), some cells withheld, several tables per system so that the joint witness LP (all
components side by side) is used, some tables contradicting their own totals. For every wanted
variable the solver must give the exact LP interval (rounded inwards to integers) whenever the
rule fails on it, and never an interval wider than the exact one; a contradicting table's
variables are reported infeasible, the others' answers unaffected."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.optimize import linprog

from optima_common.disclosure import solve

GAP = 4  # the rule of these tests: an interval passes when hi - lo >= GAP (wider passes too)


def _table(rng: random.Random, var0: int, rel0: int, broken: bool):
    """One r x c table with totals as variables; relations: each row and column sums to its total,
    the totals sum to the grand total. Returns (terms, n_vars, n_rels, values, withheld)."""
    r, c = rng.randint(2, 4), rng.randint(2, 4)
    cells = np.array([[rng.choice([0, 1, 2, 3, 7, 12, 40]) for _ in range(c)] for _ in range(r)])
    rows, cols, grand = cells.sum(1), cells.sum(0), cells.sum()
    idx = {}
    k = var0
    for i in range(r):
        for j in range(c):
            idx[("x", i, j)] = k
            k += 1
    for i in range(r):
        idx[("r", i)] = k
        k += 1
    for j in range(c):
        idx[("c", j)] = k
        k += 1
    idx[("g",)] = k
    k += 1
    values = {**{idx[("x", i, j)]: cells[i, j] for i in range(r) for j in range(c)},
              **{idx[("r", i)]: rows[i] for i in range(r)}, **{idx[("c", j)]: cols[j] for j in range(c)},
              idx[("g",)]: grand}
    terms, rel = [], rel0
    for i in range(r):
        terms += [(rel, idx[("x", i, j)], 1.0) for j in range(c)] + [(rel, idx[("r", i)], -1.0)]
        rel += 1
    for j in range(c):
        terms += [(rel, idx[("x", i, j)], 1.0) for i in range(r)] + [(rel, idx[("c", j)], -1.0)]
        rel += 1
    terms += [(rel, idx[("r", i)], 1.0) for i in range(r)] + [(rel, idx[("g",)], -1.0)]
    rel += 1
    small = [idx[("x", i, j)] for i in range(r) for j in range(c) if 0 < cells[i, j] < 5]
    withheld = set(small) | set(rng.sample(sorted(set(values) - set(small)), k=min(3, len(values) - len(small))))
    if broken:  # row 0's released total falls short of its released cells: its withheld cell would be < 0
        withheld |= {idx[("x", 0, 0)]}
        withheld -= {idx[("r", 0)]} | {idx[("x", 0, j)] for j in range(1, c)}
        values[idx[("r", 0)]] = sum(values[idx[("x", 0, j)]] for j in range(1, c)) - 2
    return terms, k - var0, rel - rel0, values, withheld


def _system(seed: int, n_tables: int, n_broken: int):
    rng = random.Random(seed)
    terms, values, withheld, blocks, var0, rel0 = [], {}, set(), [], 0, 0
    for t in range(n_tables):
        tt, nv, nr, vals, wh = _table(rng, var0, rel0, broken=t < n_broken)
        terms += tt
        values.update(vals)
        withheld |= wh
        blocks.append((range(var0, var0 + nv), range(rel0, rel0 + nr)))
        var0, rel0 = var0 + nv, rel0 + nr
    rel, var, coef = (np.array(x) for x in zip(*terms, strict=True))
    lb = np.array([0.0 if v in withheld else float(values[v]) for v in range(var0)])
    ub = np.array([np.inf if v in withheld else float(values[v]) for v in range(var0)])
    return rel.astype(np.int64), var.astype(np.int64), coef.astype(float), rel0, lb, ub, withheld, blocks


def _component_of(rel, var, lb, ub, v):
    """The relations linked to ``v`` through withheld variables (a relation of released values only
    says nothing about a withheld one): plain union-find, not the solver's graph code."""
    free = ub - lb > 1e-9
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x
    for r in np.unique(rel):
        fv = [int(u) for u in var[rel == r] if free[u]]
        for u in fv[1:]:
            parent[find(u)] = find(fv[0])
    root = find(int(v))
    return sorted({int(r) for r, u in zip(rel, var, strict=True) if free[u] and find(int(u)) == root})


def _reference(rel, var, coef, lb, ub, v):
    """The exact LP interval of variable ``v`` by SciPy (HiGHS inside, but one plain LP per end)
    over the relations linked to it; None if they contradict each other."""
    rs = _component_of(rel, var, lb, ub, v)
    mine = np.isin(rel, rs)
    vs = sorted(set(var[mine].tolist()))
    A = np.zeros((len(rs), len(vs)))
    np.add.at(A, (np.searchsorted(rs, rel[mine]), np.searchsorted(vs, var[mine])), coef[mine])
    bounds = [(lb[u], None if not np.isfinite(ub[u]) else ub[u]) for u in vs]
    ends = []
    for sign in (1, -1):
        c = np.zeros(len(vs))
        c[vs.index(v)] = sign
        res = linprog(c, A_eq=A, b_eq=np.zeros(len(rs)), bounds=bounds, method="highs")
        if res.status == 2:
            return None
        ends.append(np.inf if res.status == 3 else sign * res.fun)
    return np.ceil(ends[0] - 1e-6), np.floor(ends[1] + 1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_intervals_are_exact_where_the_rule_fails_and_never_wider(seed, monkeypatch):
    rel, var, coef, n_rel, lb, ub, withheld, blocks = _system(seed, n_tables=8, n_broken=2)
    want = np.zeros(len(lb), dtype=bool)
    want[sorted(withheld)] = True
    joint_used = []
    real_joint = solve._joint_witnesses

    def spy(comps, *a, **k):
        got = real_joint(comps, *a, **k)
        joint_used.append(len(got))
        return got
    monkeypatch.setattr(solve, "_joint_witnesses", spy)

    def certify(vs, lo, hi, exact=False):
        return np.asarray(hi, dtype=float) - np.asarray(lo, dtype=float) >= GAP

    iv = solve.intervals(rel, var, coef, n_rel, lb, ub, want, want, certify=certify, witness_cap=10.0)
    assert joint_used and joint_used[0] >= 2  # several components shared one witness LP
    infeasible = set(iv.infeasible)
    for b, block in enumerate(blocks):
        for v in (v for v in block[0] if want[v]):
            ref = _reference(rel, var, coef, lb, ub, v)
            if ref is None:
                assert b < 2 and v in infeasible, (b, v)  # only the broken tables contradict themselves
                continue
            assert v not in infeasible
            lo, hi = iv.lo[v], iv.hi[v]
            assert ref[0] <= lo <= hi <= ref[1], (v, (lo, hi), ref)  # never wider than the truth
            if ref[1] - ref[0] < GAP:  # the rule fails: the exact interval, so the finding is right
                assert (lo, hi) == ref, (v, (lo, hi), ref)
            else:
                assert hi - lo >= GAP or (lo, hi) == ref
    # the same answers as each component solving alone (no joint LP)
    monkeypatch.setattr(solve, "_joint_witnesses", lambda *a, **k: {})
    alone = solve.intervals(rel, var, coef, n_rel, lb, ub, want, want, certify=certify, witness_cap=10.0)
    assert infeasible and set(alone.infeasible) == infeasible
    fails = want & ~np.isin(np.arange(len(lb)), list(infeasible)) & ((alone.hi - alone.lo) < GAP)
    np.testing.assert_array_equal(iv.lo[fails], alone.lo[fails])
    np.testing.assert_array_equal(iv.hi[fails], alone.hi[fails])
