"""Feasible intervals of unknown cells under linear relations: algebra where it settles, HiGHS elsewhere.

Each variable ``x_j`` lies in a box ``[lb_j, ub_j]`` (a released count: ``lb = ub = value``; a
rounded count: ``value ± half the rounding base``; a withheld count or hidden quantity:
``[0, inf)``) and the relations say ``A x = 0``. Fixed variables move to the right-hand side;
what is left splits into connected components (variables linked by relations). Every *checked*
variable gets the ends of its exact LP interval that the caller asks for (``need_lo``/``need_hi``):

* components with one relation (most of them) are settled by interval arithmetic, vectorised
  over all such components at once; it is exact for one equality over a box;
* components with several relations go to HiGHS (``highspy``). With a ``certify`` rule, feasible
  points that settle most targets come first, from one LP holding all such components side by
  side (a block-diagonal model: each solve optimises every block at once; a component that
  contradicts its data is found by one elastic solve and left to its own model); then one model
  per component for the ends still needed, one solve per asked end, only the objective changing
  between solves.

Integrality is used where it is cheap: bounds are rounded inwards to integers (every count is
an integer). An attacker with an integer solver can in rare cases do better than these LP
bounds; see docs/disclosure.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import highspy
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

EPS = 1e-7


@dataclass
class Intervals:
    lo: np.ndarray  # NaN where not computed
    hi: np.ndarray
    lp_components: int = 0
    algebra_components: int = 0
    lp_solves: int = 0
    infeasible: list[int] = field(default_factory=list)  # variables whose relations contradict the data


def _floor(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), np.floor(x + 1e-6), x)


def _ceil(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), np.ceil(x - 1e-6), x)


def intervals(rel: np.ndarray, var: np.ndarray, coef: np.ndarray, n_rel: int, lb: np.ndarray, ub: np.ndarray,
              need_lo: np.ndarray, need_hi: np.ndarray, cache: dict | None = None,
              certify: Callable[..., np.ndarray] | None = None, witness_cap: float | None = None) -> Intervals:
    """Feasible intervals of the wanted variables (NaN where not computed).

    ``certify(vars, lo, hi)``: optional, says for which variables an *inner* interval
    ``[lo, hi]`` (spanned by feasible points) is already enough: the caller's rule passes on it
    and keeps passing on any wider interval. In LP components a few solves with the sum of
    the still-uncertified targets as objective (maximised, then minimised) give such feasible
    points for many targets at once; only the rest get their exact ends one by one. A
    certified variable gets the inner interval, never a wider one than the truth.
    """
    n_var = len(lb)
    lo = np.full(n_var, np.nan)
    hi = np.full(n_var, np.nan)
    out = Intervals(lo, hi)
    fixed = ub - lb <= EPS
    want = (need_lo | need_hi) & ~fixed
    fixed_term = fixed[var]
    rhs = -np.bincount(rel[fixed_term], weights=coef[fixed_term] * lb[var[fixed_term]], minlength=n_rel)
    r, v, c = rel[~fixed_term], var[~fixed_term], coef[~fixed_term]
    in_rel = np.zeros(n_var, dtype=bool)
    in_rel[v] = True
    alone = want & ~in_rel
    lo[alone], hi[alone] = lb[alone], ub[alone]
    if not len(v) or not want.any():
        return out
    live_var, vi = np.unique(v, return_inverse=True)
    live_rel, ri = np.unique(r, return_inverse=True)
    n_nodes = len(live_var) + len(live_rel)
    g = sparse.coo_matrix((np.ones(len(vi)), (vi, ri + len(live_var))), shape=(n_nodes, n_nodes)).tocsr()
    _, labels = connected_components(g, directed=False)
    term_comp = labels[vi]
    rels_per_comp = np.bincount(labels[len(live_var):], minlength=labels.max() + 1)
    single = rels_per_comp[term_comp] == 1
    _single_relations(r[single], v[single], c[single], rhs, lb, ub, want, lo, hi, out)
    out.algebra_components += int(np.count_nonzero(rels_per_comp[np.unique(term_comp[single])] == 1))
    multi = ~single
    if not multi.any():
        return out
    tc = term_comp[multi]
    order = np.argsort(tc, kind="mergesort")
    mr, mv, mc, tc = r[multi][order], v[multi][order], c[multi][order], tc[order]
    bounds_ = np.flatnonzero(np.diff(tc)) + 1
    comps: list[Component] = []
    for idx in np.split(np.arange(len(tc)), bounds_):
        cv = mv[idx]
        vars_ = np.unique(cv)
        targets = vars_[want[vars_]]
        if not len(targets):
            continue
        cr, cc = mr[idx], mc[idx]
        rels = np.unique(cr)
        sig = None
        if cache is not None:
            sig = (vars_.tobytes(), rels.tobytes(), np.round(rhs[rels], 6).tobytes(), lb[vars_].tobytes(),
                   ub[vars_].tobytes(), targets.tobytes(), need_lo[targets].tobytes(), need_hi[targets].tobytes())
            if sig in cache:
                res = cache[sig]
                if res is None:
                    out.infeasible.extend(targets.tolist())
                else:
                    lo[targets], hi[targets] = res
                continue
        comps.append(Component(cr, cv, cc, rels, vars_, targets, sig))
    found = _joint_witnesses(comps, rhs, lb, ub, certify, out, witness_cap) if certify is not None else {}
    for i, comp in enumerate(comps):
        out.lp_components += 1
        res = _lp(comp.cr, comp.cv, comp.cc, comp.rels, comp.vars_, rhs, lb, ub, comp.targets, need_lo, need_hi, out,
                  certify, witness_cap, found.get(i))
        if cache is not None:
            cache[comp.sig] = res
        if res is None:
            out.infeasible.extend(comp.targets.tolist())
        else:
            lo[comp.targets], hi[comp.targets] = res
    return out


@dataclass
class Component:
    """One connected component with several relations: its terms, relations, variables and targets."""

    cr: np.ndarray
    cv: np.ndarray
    cc: np.ndarray
    rels: np.ndarray
    vars_: np.ndarray
    targets: np.ndarray
    sig: tuple | None


def _single_relations(r, v, a, rhs, lb, ub, want, lo, hi, out) -> None:
    """Exact range of each wanted variable in its only relation sum(a_j x_j) = b, all at once."""
    if not len(r):
        return
    with np.errstate(invalid="ignore"):
        t_lo = np.where(a > 0, a * lb[v], a * ub[v])
        t_hi = np.where(a > 0, a * ub[v], a * lb[v])
    t_lo = np.nan_to_num(t_lo, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    t_hi = np.nan_to_num(t_hi, nan=np.inf, posinf=np.inf, neginf=-np.inf)
    f_lo, f_hi = np.isfinite(t_lo), np.isfinite(t_hi)
    n = len(rhs)
    s_lo = np.bincount(r, weights=np.where(f_lo, t_lo, 0), minlength=n)
    s_hi = np.bincount(r, weights=np.where(f_hi, t_hi, 0), minlength=n)
    i_lo = np.bincount(r, weights=(~f_lo).astype(float), minlength=n)
    i_hi = np.bincount(r, weights=(~f_hi).astype(float), minlength=n)
    b = rhs[r]
    bad = ((i_lo[r] == 0) & (s_lo[r] > b + 1e-6)) | ((i_hi[r] == 0) & (s_hi[r] < b - 1e-6))
    k = want[v]
    rest_lo = np.where(i_lo[r] - (~f_lo) > 0, -np.inf, s_lo[r] - np.where(f_lo, t_lo, 0))
    rest_hi = np.where(i_hi[r] - (~f_hi) > 0, np.inf, s_hi[r] - np.where(f_hi, t_hi, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        x1, x2 = (b - rest_hi) / a, (b - rest_lo) / a
    xl = np.maximum(np.minimum(x1, x2), lb[v])
    xh = np.minimum(np.maximum(x1, x2), ub[v])
    ok = k & ~bad
    lo[v[ok]] = _ceil(xl[ok])
    hi[v[ok]] = _floor(xh[ok])
    out.infeasible.extend(v[k & bad].tolist())


def _quiet_highs() -> highspy.Highs:
    """A HiGHS instance that writes nothing: its constructor prints a banner on the process's
    stdout (file descriptor 1, below Python), which would corrupt a command's --json output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


WITNESS_ROUNDS = 3
WITNESS_CAP = 1e7  # targets are capped here in the witness solves only (no unbounded sums)


def _lp(cr, cv, cc, rels, vars_, rhs, lb, ub, targets, need_lo, need_hi, out, certify=None, witness_cap=None,
        found=None):
    """The component's intervals: witness points first (``found``: the ones :func:`_joint_witnesses`
    gave it, else its own), then an exact solve per end still needed."""
    los = np.full(len(targets), np.nan)
    his = np.full(len(targets), np.nan)
    if found is not None:
        todo, wl_, wh = found
        los[~todo], his[~todo] = wl_[~todo], wh[~todo]
        if not todo.any():
            return _ceil(los), _floor(his)
    h, col_ub = _joint_model([Component(cr, cv, cc, rels, vars_, targets, None)], rhs, lb, ub)  # one block
    Status = highspy.HighsModelStatus
    cols = np.searchsorted(vars_, targets).astype(np.int32)
    if found is None:
        todo = np.ones(len(targets), dtype=bool)
        wl_ = np.full(len(targets), np.inf)
    if certify is not None and todo.sum() > 2:  # more witness rounds here, on this component alone
        todo, wl, wh = _witnesses(h, cols, col_ub, certify, targets, out, witness_cap, start=found)
        if todo is None:
            return None
        los[~todo], his[~todo] = wl[~todo], wh[~todo]
        wl_ = wl
    for k in np.flatnonzero(todo):
        t = targets[k]
        j = int(cols[k])
        h.changeColCost(j, 1.0)
        for sense, need, store in ((highspy.ObjSense.kMaximize, need_hi[t], his),
                                   (highspy.ObjSense.kMinimize, need_lo[t], los)):
            if not need:
                continue
            if sense == highspy.ObjSense.kMinimize and certify is not None and np.isfinite(his[k]) and (
                    (his[k] <= lb[t]) or certify(targets[k:k + 1], np.ceil(np.minimum(wl_[k:k + 1], his[k:k + 1]) - 1e-6),
                                                 np.floor(his[k:k + 1] + 1e-6))[0]):
                los[k] = min(wl_[k], his[k])  # the exact hi and a feasible point already settle it
                continue
            h.changeObjectiveSense(sense)
            h.run()
            out.lp_solves += 1
            st = h.getModelStatus()
            if st == Status.kInfeasible:
                return None
            if st == Status.kOptimal:
                store[k] = h.getInfo().objective_function_value
            elif st in (Status.kUnbounded, Status.kUnboundedOrInfeasible):
                store[k] = np.inf if sense == highspy.ObjSense.kMaximize else lb[t]
            else:  # no answer: assume the widest box (the coordinator then errs on passing)
                store[k] = ub[t] if sense == highspy.ObjSense.kMaximize else lb[t]
        h.changeColCost(j, 0.0)
    return _ceil(los), _floor(his)


def _joint_witnesses(comps: list[Component], rhs, lb, ub, certify, out, low_cap) -> dict[int, tuple]:
    """Witness points of many components from one LP: their blocks side by side (no relation
    links two), so maximising or minimising the sum of all their open targets optimises each
    block's own sum at once, and a block's part of the solution is a feasible point of that
    component. {component index: (still to solve exactly, inner lo, inner hi)}; {} when fewer
    than two components want witnesses, or when one of them contradicts its data (each is then
    solved on its own, which finds it)."""
    chosen = [i for i, c in enumerate(comps) if len(c.targets) > 2]
    if len(chosen) < 2:
        return {}
    h, col_ub = _joint_model([comps[i] for i in chosen], rhs, lb, ub)
    h.run()
    out.lp_solves += 1
    if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
        # some components contradict their data (a scaled or rounded table can): find them with
        # one elastic solve, leave them to their own solve (which reports them), join the rest
        bad = _infeasible_blocks([comps[i] for i in chosen], rhs, lb, ub, out)
        chosen = [i for k, i in enumerate(chosen) if k not in bad]
        if len(chosen) < 2:
            return {}
        h, col_ub = _joint_model([comps[i] for i in chosen], rhs, lb, ub)
    parts = [comps[i] for i in chosen]
    col_off = np.cumsum([0] + [len(c.vars_) for c in parts])
    tcols = np.concatenate([col_off[k] + np.searchsorted(c.vars_, c.targets) for k, c in enumerate(parts)])
    block = np.repeat(np.arange(len(parts)), [len(c.targets) for c in parts])
    # one round per phase: it settles most targets; the few left go on, on their own component's
    # model, cheaper than re-solving every block
    todo, wl, wh = _witnesses(h, tcols.astype(np.int32), col_ub, certify, np.concatenate([c.targets for c in parts]),
                              out, low_cap, block=block, rounds=1)
    if todo is None:  # never after the elastic check; each component on its own then
        return {}
    return {i: (todo[block == k], wl[block == k], wh[block == k]) for k, i in enumerate(chosen)}


def _joint_matrix(parts: list[Component]) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """The components' relations as one block-diagonal matrix; its variables and relations."""
    col_off = np.cumsum([0] + [len(c.vars_) for c in parts])
    row_off = np.cumsum([0] + [len(c.rels) for c in parts])
    rows = np.concatenate([row_off[k] + np.searchsorted(c.rels, c.cr) for k, c in enumerate(parts)])
    cols = np.concatenate([col_off[k] + np.searchsorted(c.vars_, c.cv) for k, c in enumerate(parts)])
    A = sparse.csr_matrix((np.concatenate([c.cc for c in parts]), (rows, cols)), shape=(row_off[-1], col_off[-1]))
    return A, np.concatenate([c.vars_ for c in parts]), np.concatenate([c.rels for c in parts])


def _joint_model(parts: list[Component], rhs, lb, ub) -> tuple[highspy.Highs, np.ndarray]:
    """A HiGHS model of the components side by side (zero objective); and its column upper bounds."""
    A, all_vars, all_rels = _joint_matrix(parts)
    h = _quiet_highs()
    col_ub = np.where(np.isfinite(ub[all_vars]), ub[all_vars], highspy.kHighsInf).astype(float)
    h.addVars(len(all_vars), lb[all_vars].astype(float), col_ub)
    b = rhs[all_rels].astype(float)
    h.addRows(len(b), b, b, A.nnz, A.indptr[:-1].astype(np.int32), A.indices.astype(np.int32), A.data.astype(float))
    return h, col_ub


def _infeasible_blocks(parts: list[Component], rhs, lb, ub, out) -> set[int]:
    """The blocks that cannot meet their relations: each relation gets two slack columns
    (``A x + s+ - s- = b``, slacks >= 0) and the sum of slacks is minimised; since no relation
    links two blocks, a block's slacks sum to more than 0 exactly when it is infeasible."""
    A, all_vars, all_rels = _joint_matrix(parts)
    n_rows = A.shape[0]
    eye = sparse.identity(n_rows, format="csr")
    E = sparse.hstack([A, eye, -eye], format="csc")
    h = _quiet_highs()
    x_ub = np.where(np.isfinite(ub[all_vars]), ub[all_vars], highspy.kHighsInf).astype(float)
    h.addVars(E.shape[1], np.concatenate([lb[all_vars].astype(float), np.zeros(2 * n_rows)]),
              np.concatenate([x_ub, np.full(2 * n_rows, highspy.kHighsInf)]))
    slack = np.arange(len(all_vars), E.shape[1], dtype=np.int32)
    h.changeColsCost(len(slack), slack, np.ones(len(slack)))
    E = E.tocsr()
    b = rhs[all_rels].astype(float)
    h.addRows(n_rows, b, b, E.nnz, E.indptr[:-1].astype(np.int32), E.indices.astype(np.int32), E.data.astype(float))
    h.run()
    out.lp_solves += 1
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return set(range(len(parts)))  # no answer: every component on its own
    s_val = np.asarray(h.getSolution().col_value)[len(all_vars):]
    per_row = s_val[:n_rows] + s_val[n_rows:]
    row_block = np.repeat(np.arange(len(parts)), [len(c.rels) for c in parts])
    return set(np.flatnonzero(np.bincount(row_block, weights=per_row, minlength=len(parts)) > 1e-6).tolist())


def _witnesses(h, cols, col_ub, certify, targets, out, low_cap=None, block=None, rounds=None, start=None):
    """Feasible points that settle many targets at once: maximise, then minimise, the sum of the
    targets not yet certified (targets capped at :data:`WITNESS_CAP` so that the sum stays
    bounded); each point's values bound every target's interval from the inside.
    Returns (still to solve exactly, inner lo, inner hi), or (None, ...) if infeasible.
    ``block``: the component of each target when ``h`` holds several (see :func:`_joint_witnesses`);
    ``rounds``: at most this many rounds per phase (default :data:`WITNESS_ROUNDS`); ``start``:
    (open, inner lo, inner hi) found before (a joint model's), to go on from."""
    col_lb = np.asarray(h.getLp().col_lower_, dtype=float)[cols]
    if start is None:
        wl = np.full(len(cols), np.inf)
        wh = np.full(len(cols), -np.inf)
        todo = np.ones(len(cols), dtype=bool)
    else:
        todo, wl, wh = (np.array(x, dtype=dt) for x, dt in zip(start, (bool, float, float), strict=True))
    rounds = WITNESS_ROUNDS if rounds is None else rounds
    done, wl, wh = _witness_rounds(h, cols, col_lb, np.minimum(col_ub[cols], WITNESS_CAP), certify, targets, out,
                                   todo, wl, wh, final=True, block=block, rounds=rounds)
    if done is None:
        h.changeColsBounds(len(cols), cols, col_lb, col_ub[cols])
        return None, wl, wh
    todo = done
    if low_cap is not None and todo.any():
        # a vertex raises few variables to a far cap; a near cap raises every one it can at once
        # (infeasible under the near cap proves nothing: the points found so far stand)
        capped = np.where(todo, np.maximum(np.minimum(col_ub[cols], low_cap), col_lb), np.minimum(col_ub[cols], WITNESS_CAP))
        done, wl2, wh2 = _witness_rounds(h, cols, col_lb, capped, certify, targets, out, todo, wl, wh, final=False,
                                         block=block, rounds=rounds)
        if done is not None:
            todo, wl, wh = done, wl2, wh2
    h.changeColsBounds(len(cols), cols, col_lb, col_ub[cols])
    return todo, _ceil(wl), _floor(wh)


def _witness_rounds(h, cols, col_lb, capped, certify, targets, out, todo, wl, wh, *, final, block=None,
                    rounds=WITNESS_ROUNDS):
    Status = highspy.HighsModelStatus
    h.changeColsBounds(len(cols), cols, col_lb, capped)
    todo, wl, wh = todo.copy(), wl.copy(), wh.copy()
    MAX, MIN = highspy.ObjSense.kMaximize, highspy.ObjSense.kMinimize
    for _ in range(rounds):
        # all open targets up, the ones still at 0 up on their own (a largest sum of 0 pins them
        # all to 0), then all open targets down
        for sense, which in ((MAX, None), (MAX, "zero"), (MIN, None)):
            sel = todo & (wh <= 0) if which == "zero" else todo.copy()
            if not sel.any():
                continue
            active = cols[sel]
            h.changeColsCost(len(active), active, np.ones(len(active)))
            h.changeObjectiveSense(sense)
            h.run()
            out.lp_solves += 1
            st = h.getModelStatus()
            x = np.asarray(h.getSolution().col_value)[cols] if st == Status.kOptimal else None
            best = h.getInfo().objective_function_value if x is not None else np.nan
            h.changeColsCost(len(active), active, np.zeros(len(active)))
            if st == Status.kInfeasible:
                return None, wl, wh
            if x is None:
                continue
            wl, wh = np.minimum(wl, x), np.maximum(wh, x)
            if final and sense == MAX:
                # a largest sum of 0: every one of them is pinned to 0 (exactly [0, 0]); with several
                # blocks, each block's own sum
                if block is None:
                    zero_sum = np.full(len(cols), best <= 1e-6)
                else:
                    zero_sum = (np.bincount(block[sel], weights=x[sel], minlength=block.max() + 1) <= 1e-6)[block]
                pinned = sel & (col_lb <= 0) & zero_sum
                if pinned.any():
                    wl[pinned], wh[pinned] = 0.0, 0.0
                    todo &= ~(pinned & np.asarray(certify(targets, wl, wh, exact=True), dtype=bool))
            todo &= ~np.asarray(certify(targets, _ceil(wl), _floor(wh)), dtype=bool)
        if not todo.any():
            break
    return todo, wl, wh

