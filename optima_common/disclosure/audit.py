"""The audit: can any withheld count be narrowed down from what is released?

One rule, the same at the site (before signing) and at the coordinator (on every bundle it
verifies or ingests). For every withheld count and every protected hidden quantity (a
complement such as "in the cohort but without the concept", a site-only fact such as "in
cohort A but not in B"), the feasible interval ``[lo, hi]`` given the released numbers, the
declared relations and non-negativity must

* be pinned to zero (``hi <= 0``: nobody, which zero cells say openly anyway), or
* reach down to 1 and up to ``min - 1`` (``lo <= 1 and hi >= min - 1``): every small value
  stays possible, or
* lie at or above ``min``; a withheld *cell* then still needs ``min - 1`` possible values
  (``hi - lo >= min - 2``), so that a secondary suppression is not an exact publication.

At the site, a count withheld because of the release history (the same cell was released
before as ``old``) must in addition keep every value from ``old ± 1`` to ``old ± (min - 1)``
(on the side the true value lies) possible.

:func:`secondary_suppression` adds withheld cells, smallest value first among the cells of a
relation that pins a failing one, until the audit passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optima_common.disclosure import declarations as D
from optima_common.disclosure import solve
from optima_common.errors import DisclosureError


@dataclass
class Problem:
    """The table and its relations as bounds and terms, ready for :func:`solve.intervals`."""

    frame: pd.DataFrame
    built: D.Built
    rel: np.ndarray
    var: np.ndarray
    coef: np.ndarray
    protected_hidden: np.ndarray  # bool per variable (False for rows)
    true: np.ndarray  # site-only true values (NaN where unknown)
    fixed_hidden: dict[int, float] = field(default_factory=dict)  # hidden values the attacker knows (zeros)
    _round_base: np.ndarray | None = None  # per row: base of a nearest_<b> rounding (0: exact), computed once

    @property
    def n(self) -> int:
        return len(self.frame)

    @property
    def n_var(self) -> int:
        return self.built.system.n_var


@dataclass(frozen=True)
class Finding:
    row: int  # -1 for a hidden quantity
    label: str  # the relation that pins it
    lo: float
    hi: float


def problem(frame: pd.DataFrame, built: D.Built, true: np.ndarray | None = None) -> Problem:
    s = built.system
    rel, var, coef = s.terms()
    n_var = s.n_var
    prot = np.zeros(n_var, dtype=bool)
    prot[s.n:] = np.asarray(s.hidden_protect, dtype=bool)
    tv = np.full(n_var, np.nan)
    if true is not None:
        tv[: s.n] = true
    tv[s.n:] = np.asarray(s.hidden_value, dtype=float)
    return Problem(frame, built, rel, var, coef, prot, tv)


def fill_hidden_truth(p: Problem) -> None:
    """Site only: the true value of every hidden slack (one per relation) from the true counts; a
    relation the true data violate is dropped (a declaration that does not hold here protects
    nothing and would make the system infeasible)."""
    if not len(p.rel):
        return
    n = p.n
    tv = p.true
    hidden_term = p.var >= n
    per_rel_hidden = np.bincount(p.rel[hidden_term], minlength=p.built.system.n_rel)
    known = ~np.isnan(tv[p.var]) | hidden_term
    all_known = np.bincount(p.rel, weights=(~known).astype(float), minlength=p.built.system.n_rel) == 0
    resid = np.bincount(p.rel[~hidden_term], weights=p.coef[~hidden_term] * np.nan_to_num(tv[p.var[~hidden_term]]),
                        minlength=p.built.system.n_rel)
    # one hidden unknown with unknown truth: solve it
    for t in np.flatnonzero(hidden_term):
        r, v = p.rel[t], p.var[t]
        if per_rel_hidden[r] == 1 and all_known[r] and np.isnan(tv[v]):
            tv[v] = -resid[r] / p.coef[t]
    violated = all_known & (per_rel_hidden == 0) & (np.abs(resid) > 1e-6)
    neg = np.zeros_like(violated)
    for t in np.flatnonzero(hidden_term):
        if tv[p.var[t]] < -1e-6:
            neg[p.rel[t]] = True
    bad = violated | neg
    if bad.any():
        keep = ~bad[p.rel]
        p.rel, p.var, p.coef = p.rel[keep], p.var[keep], p.coef[keep]


def bounds(p: Problem, suppressed: np.ndarray, *, rounding: int = 0, minimum: int = 0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lb, ub, checked): released counts fixed (or within the rounding), the rest non-negative.
    A count of a result rounded one by one (setting ``count_rounding = nearest_<b>``) lies in the
    exact preimage of its rounding (:func:`optima_common.disclosure.rounding.preimage`)."""
    f = p.frame
    lb = np.zeros(p.n_var)
    ub = np.full(p.n_var, np.inf)
    cnt = f["is_count"].to_numpy()
    shown = cnt & ~suppressed
    num = f["num"].to_numpy()
    half = rounding / 2 if rounding > 1 else 0.0
    lb[: p.n][shown] = np.maximum(num[shown] - half, 0) if half else num[shown]
    ub[: p.n][shown] = num[shown] + half if half else num[shown]
    if half:  # a released 0 stays an exact 0
        z = shown & (num == 0)
        ub[: p.n][z] = 0
    if "rounding" in f.columns:
        from optima_common.disclosure.rounding import PREFIX, preimage

        if p._round_base is None:
            rk = f["rounding"]
            is_near = rk.str.startswith(PREFIX).astype(bool)
            p._round_base = np.where(is_near, pd.to_numeric(rk.astype(object).str[len(PREFIX):].where(is_near),
                                                            errors="coerce"), 0.0)
        near = shown & (p._round_base > 0)
        if near.any():
            lo, hi = preimage(num[near], p._round_base[near], minimum)
            lb[: p.n][near], ub[: p.n][near] = lo, hi
    for v, val in p.fixed_hidden.items():
        lb[v] = ub[v] = val
    checked = np.zeros(p.n_var, dtype=bool)
    checked[: p.n] = cnt & suppressed
    checked |= p.protected_hidden
    for v in p.fixed_hidden:
        checked[v] = False
    # a released (not withheld) count is never "narrowed": it is published
    return lb, ub, checked


def needs(p: Problem, checked: np.ndarray, minimum: int, anchors: dict) -> tuple[np.ndarray, np.ndarray]:
    """Which ends of each interval the rule needs. With the true value known (site) most checks
    need one end only: a small value needs ``lo`` only if above 1 and ``hi`` only if below min-1;
    a large hidden complement cannot reveal a small number whatever its interval."""
    t = p.true
    is_cell = np.arange(p.n_var) < p.n
    known = ~np.isnan(t)
    need_lo = checked & (~known | is_cell)
    need_hi = checked.copy()
    small = known & (t >= 0.5) & (t <= minimum - 1)
    need_lo = np.where(known & small, checked & (t > 1), need_lo)
    need_hi = np.where(known & small, checked & (t < minimum - 1), need_hi)
    zero = known & (t < 0.5)
    need_lo = np.where(zero, False, need_lo)
    large_hidden = known & (t > minimum - 1) & ~is_cell
    need_lo = np.where(large_hidden, False, need_lo)
    need_hi = np.where(large_hidden, False, need_hi)
    for v in anchors:
        need_lo[v] = need_hi[v] = checked[v]
    return need_lo, need_hi


def change_passes(dlo: float, dhi: float, change: float, minimum: int) -> bool:
    """The rule for the change of one cell between two releases (new - old), whose feasible
    interval for a reader of both is ``[dlo, dhi]`` and whose true value is ``change`` (NaN if the
    site does not know it, e.g. both releases rounded): the same rule as for a withheld count, on
    each side of zero. A change of 1..min-1 keeps every value from 1 to min-1 (same sign) possible;
    a change of 0 or an unknown change must not be known to be a small non-zero number."""
    if not math.isnan(change):
        if change >= minimum or change <= -minimum:
            return True
        if change > 0:
            return dlo <= 1 and dhi >= minimum - 1
        if change < 0:
            return dhi >= -1 and dlo <= -(minimum - 1)
    return (dhi <= 0 or dhi >= minimum - 1) and (dlo >= 0 or dlo <= -(minimum - 1))


def change_passes_many(dlo: np.ndarray, dhi: np.ndarray, change: np.ndarray, minimum: int) -> np.ndarray:
    """:func:`change_passes` for many cells at once (same answers, NaN changes included)."""
    dlo, dhi, change = (np.asarray(x, dtype=float) for x in (dlo, dhi, change))
    with np.errstate(invalid="ignore"):
        unknown_or_zero = (dhi <= 0) | (dhi >= minimum - 1)
        unknown_or_zero &= (dlo >= 0) | (dlo <= -(minimum - 1))
        known = ~np.isnan(change)
        big = known & ((change >= minimum) | (change <= -minimum))
        up = known & ~big & (change > 0)
        down = known & ~big & (change < 0)
        out = unknown_or_zero.copy()
        out[big] = True
        out[up] = (dlo[up] <= 1) & (dhi[up] >= minimum - 1)
        out[down] = (dhi[down] >= -1) & (dlo[down] <= -(minimum - 1))
    return out


def anchor_tuple(anchor) -> tuple[float, float, float]:
    """An anchor of the release history as (lo, hi, true change offset): a plain number is an exact
    earlier release (lo = hi = the old value, the change known from the truth)."""
    if isinstance(anchor, tuple):
        return anchor
    return float(anchor), float(anchor), float("nan")


def passes(lo: float, hi: float, minimum: int, *, is_cell: bool, true: float = float("nan"),
           anchor=None) -> bool:
    """The rule for one withheld count or protected hidden quantity (NaN: end not computed).

    ``anchor``: the release history's earlier release of the same cell, a number (released exactly)
    or ``(lo, hi, change)``: the interval the earlier release stands for (rounded counts) and the
    true change since (NaN if unknown); the change, as a reader of both releases bounds it, must
    pass :func:`change_passes`."""
    if anchor is not None:
        a_lo, a_hi, change = anchor_tuple(anchor)
        if math.isnan(change) and not math.isnan(true) and a_lo == a_hi:
            change = true - a_lo
        if not (math.isnan(change) and math.isnan(true) and a_lo == a_hi) and \
                not change_passes(lo - a_hi, hi - a_lo, change, minimum):
            return False
    if not math.isnan(true):
        if true < 0.5:
            return hi <= 0 or hi >= minimum - 1
        if true <= minimum - 1:
            return (true <= 1 or lo <= 1) and (true >= minimum - 1 or hi >= minimum - 1)
        return not is_cell or hi - lo >= minimum - 2
    # coordinator: the true value is unknown
    if hi <= 0:
        return True
    if hi < minimum - 1:
        return False
    return not is_cell or hi - lo >= minimum - 2


def passes_many(lo: np.ndarray, hi: np.ndarray, minimum: int, is_cell: np.ndarray, true: np.ndarray) -> np.ndarray:
    """:func:`passes` without anchors, for many variables at once (same answers, NaN included)."""
    lo, hi, true = (np.asarray(x, dtype=float) for x in (lo, hi, true))
    is_cell = np.asarray(is_cell, dtype=bool)
    with np.errstate(invalid="ignore"):
        wide = ~is_cell | (hi - lo >= minimum - 2)
        known = ~np.isnan(true)
        zero = known & (true < 0.5)
        small = known & ~zero & (true <= minimum - 1)
        big = known & ~zero & ~small
        out = np.zeros(len(lo), dtype=bool)
        out[zero] = (hi[zero] <= 0) | (hi[zero] >= minimum - 1)
        out[small] = ((true[small] <= 1) | (lo[small] <= 1)) & ((true[small] >= minimum - 1) | (hi[small] >= minimum - 1))
        out[big] = wide[big]
        unk = ~known
        out[unk] = (hi[unk] <= 0) | (~(hi[unk] < minimum - 1) & wide[unk])
    return out


def _passes_all(p: Problem, vs: np.ndarray, lo: np.ndarray, hi: np.ndarray, minimum: int, anchors: dict) -> np.ndarray:
    vs = np.asarray(vs, dtype=np.int64)
    out = passes_many(lo, hi, minimum, vs < p.n, p.true[vs])
    if anchors:
        n = p.n
        for i in np.flatnonzero(np.isin(vs, np.fromiter(anchors, dtype=np.int64, count=len(anchors)))):
            v = int(vs[i])
            out[i] = passes(float(lo[i]), float(hi[i]), minimum, is_cell=v < n, true=float(p.true[v]), anchor=anchors[v])
    return out


def findings(p: Problem, suppressed: np.ndarray, minimum: int, *, anchors: dict | None = None,
             rounding: int = 0, cache: dict | None = None, stats: dict | None = None,
             skip: np.ndarray | None = None) -> list[tuple[int, float, float]]:
    """Variables that fail the rule, as (variable, lo, hi); ``skip``: variables known to pass."""
    anchors = anchors or {}
    lb, ub, checked = bounds(p, suppressed, rounding=rounding, minimum=minimum)
    if skip is not None:
        checked &= ~skip
    need_lo, need_hi = needs(p, checked, minimum, anchors)
    iv = solve.intervals(p.rel, p.var, p.coef, p.built.system.n_rel, lb, ub, need_lo, need_hi, cache,
                         certify=_certifier(p, minimum, anchors), witness_cap=2.0 * minimum)
    if stats is not None:
        for k in ("lp_components", "algebra_components", "lp_solves"):
            stats[k] = stats.get(k, 0) + getattr(iv, k)
    computed = ~np.isnan(iv.lo) | ~np.isnan(iv.hi)
    vs = np.flatnonzero(checked & computed)
    ok = _passes_all(p, vs, iv.lo[vs], iv.hi[vs], minimum, anchors)
    return [(int(v), float(iv.lo[v]), float(iv.hi[v])) for v in vs[~ok]]


def _certifier(p: Problem, minimum: int, anchors: dict):
    """For :func:`solve.intervals`: which variables already pass on an inner interval. Only
    ``hi >= min - 1`` is accepted (every branch of :func:`passes` is then monotone: a wider
    interval passes too; ``hi <= 0`` "pinned to nobody" is not, and is left to the exact solve).
    A cell anchored by the release history always gets its exact interval (the rule on the change
    since the earlier release is not monotone on both sides)."""
    anchored = np.fromiter(anchors, dtype=np.int64, count=len(anchors)) if anchors else np.zeros(0, dtype=np.int64)

    def ok(vs: np.ndarray, lo: np.ndarray, hi: np.ndarray, exact: bool = False) -> np.ndarray:
        vs, lo, hi = np.asarray(vs, dtype=np.int64), np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        gate = np.ones(len(vs), dtype=bool) if exact else ((hi >= minimum - 1) & ~np.isin(vs, anchored))
        return gate & _passes_all(p, vs, lo, hi, minimum, anchors)
    return ok


class _Index:
    """Terms by variable and by relation (for the candidate search)."""

    def __init__(self, p: Problem):
        self._by_var = _csr(p.var, p.rel, p.n_var)
        self._by_rel = _csr(p.rel, p.var, p.built.system.n_rel)

    def relations_of(self, v: int) -> np.ndarray:
        ptr, idx = self._by_var
        return idx[ptr[v]:ptr[v + 1]] if v + 1 < len(ptr) else np.zeros(0, dtype=np.int64)

    def members(self, r: int) -> np.ndarray:
        ptr, idx = self._by_rel
        return idx[ptr[r]:ptr[r + 1]] if r + 1 < len(ptr) else np.zeros(0, dtype=np.int64)


def _csr(keys: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``values`` per key as (pointer, indices): a sparse row index without pandas."""
    pairs = np.unique(np.stack([np.asarray(keys, dtype=np.int64), np.asarray(values, dtype=np.int64)]), axis=1)
    ptr = np.zeros(max(n, 0) + 1, dtype=np.int64)
    np.add.at(ptr, pairs[0] + 1, 1) if pairs.size else None
    return np.cumsum(ptr), pairs[1]


def secondary_suppression(p: Problem, suppressed: np.ndarray, minimum: int, *, anchors: dict | None = None,
                          rounding: int = 0, max_rounds: int = 200, stats: dict | None = None
                          ) -> tuple[np.ndarray, dict[int, str]]:
    """Withhold more counts, smallest first, until :func:`findings` is empty. Returns the new mask and,
    per newly withheld row, the label of the relation that made it necessary."""
    sup = suppressed.copy()
    reasons: dict[int, str] = {}
    cnt = p.frame["is_count"].to_numpy()
    labels = p.built.system.labels
    cache: dict = {}
    index = _Index(p)
    stuck: dict[int, int] = {}
    # Withholding more only widens every interval, so a variable that passed once passes for good.
    passed = np.zeros(p.n_var, dtype=bool)
    for _ in range(max_rounds):
        _, _, checked = bounds(p, sup, rounding=rounding, minimum=minimum)
        bad = findings(p, sup, minimum, anchors=anchors, rounding=rounding, cache=cache, stats=stats, skip=passed)
        passed |= checked
        passed[[v for v, _, _ in bad]] = False
        if not bad:
            return sup, reasons
        chosen: dict[int, str] = {}
        for v, _lo, _hi in bad:
            stuck[v] = stuck.get(v, 0) + 1
            if stuck[v] > 2:  # one cell at a time did not help: withhold every released count around it
                for r, m in _around(p, index, v, sup, cnt, depth=stuck[v] - 2):
                    chosen.setdefault(m, labels[r])
                continue
            pick = _candidate(p, index, v, sup, cnt, chosen)
            if pick is None:
                where = p.frame.iloc[v] if v < p.n else None
                what = (f"{where['result_type']} {where['variable_name']}/{where['estimate_name']}" if where is not None
                        else "a hidden quantity")
                raise DisclosureError(f"cannot protect {what}: no released count left to withhold around it")
            chosen[pick[0]] = labels[pick[1]]
        for r, lab in chosen.items():
            sup[r] = True
            reasons[r] = lab
    raise DisclosureError(f"secondary suppression did not settle within {max_rounds} rounds")


def _around(p: Problem, index: _Index, v: int, sup: np.ndarray, cnt: np.ndarray, depth: int) -> list[tuple[int, int]]:
    """(relation, row) of every released count within ``depth`` relations of ``v``."""
    out, frontier, seen = [], {v}, set()
    for _ in range(depth):
        nxt = set()
        for u in frontier:
            for r in index.relations_of(u):
                if r in seen:
                    continue
                seen.add(int(r))
                for m in index.members(r):
                    nxt.add(int(m))
                    if m < p.n and not sup[m] and cnt[m]:
                        out.append((int(r), int(m)))
        frontier = nxt
    return out


def _candidate(p: Problem, index: _Index, v: int, sup: np.ndarray, cnt: np.ndarray,
               chosen: dict) -> tuple[int, int] | None:
    """(row, relation) to withhold for failing variable ``v``: the smallest released count in a
    relation with ``v`` (non-zero first), widening to relations of relations if none is left."""
    rels = index.relations_of(v)
    seen_rel: set[int] = set()
    for _depth in range(6):
        best = None
        for r in rels:
            seen_rel.add(int(r))
            for m in index.members(r):
                if m >= p.n or sup[m] or not cnt[m]:
                    continue
                if m in chosen:
                    return int(m), int(r)
                val = p.true[m] if not math.isnan(p.true[m]) else p.frame["num"].iat[m]
                k = (val == 0, val, m)
                if best is None or k < best[0]:
                    best = (k, int(m), int(r))
        if best is not None:
            return best[1], best[2]
        nxt = set()
        for r in rels:
            for m in index.members(r):
                nxt.update(int(x) for x in index.relations_of(m))
        rels = np.array(sorted(nxt - seen_rel))
        if not len(rels):
            return None
    return None
