"""Linear relations between the count cells of a released table, as one sparse system.

Every relation is an equality ``sum(coef * x) = 0`` over *variables*:

* variable ``i < n`` is row ``i`` of the result's data (only count rows take part);
* variables ``>= n`` are *hidden*: quantities nobody releases but that an attacker can reason
  about, e.g. the slack ``s >= 0`` of an inequality ``part <= total`` (``part + s = total``:
  the persons *without* the attribute, which must not be small either), or a site-only fact
  such as the number of persons in cohort A and not in cohort B.

Every variable is non-negative. A hidden variable can be *protected*: the audit then treats it
like a suppressed cell (its feasible interval must not reveal a small number). Each relation
carries a label ("attrition chain", "sex breakdown", ...) that the review page shows as the
reason of a secondary suppression.

The helpers below build relations vectorised from pandas frames with a ``row`` column (the
variable) and a ``key`` column (which rows belong to one relation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class System:
    """Relations over ``n`` row variables plus hidden variables (appended)."""

    n: int
    rel: list[np.ndarray] = field(default_factory=list)
    var: list[np.ndarray] = field(default_factory=list)
    coef: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one per relation
    hidden_protect: list[bool] = field(default_factory=list)
    hidden_value: list[float] = field(default_factory=list)  # site-only true values (NaN if unknown)

    @property
    def n_rel(self) -> int:
        return len(self.labels)

    @property
    def n_var(self) -> int:
        return self.n + len(self.hidden_protect)

    def new_hidden(self, k: int, *, protect: bool, value: np.ndarray | None = None) -> np.ndarray:
        start = self.n_var
        self.hidden_protect.extend([protect] * k)
        vals = np.full(k, np.nan) if value is None else np.asarray(value, dtype=float)
        self.hidden_value.extend(vals.tolist())
        return np.arange(start, start + k, dtype=np.int64)

    def add(self, rel_local: np.ndarray, var: np.ndarray, coef: np.ndarray, n_new: int, label: str | list[str]) -> None:
        """Add ``n_new`` relations; ``rel_local`` numbers them 0..n_new-1."""
        if n_new == 0:
            return
        base = self.n_rel
        self.rel.append(np.asarray(rel_local, dtype=np.int64) + base)
        self.var.append(np.asarray(var, dtype=np.int64))
        self.coef.append(np.asarray(coef, dtype=float))
        self.labels.extend([label] * n_new if isinstance(label, str) else list(label))

    def terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.rel:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros(0)
        return np.concatenate(self.rel), np.concatenate(self.var), np.concatenate(self.coef)


def _split(parts: pd.DataFrame, totals: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Keep keys that have exactly one total and at least one part; number them 0..k-1."""
    totals = totals.drop_duplicates("key", keep=False)
    keys = np.intersect1d(totals["key"].unique(), parts["key"].unique())
    parts = parts[parts["key"].isin(keys)]
    totals = totals[totals["key"].isin(keys)]
    codes = pd.Index(keys)
    return parts, totals, codes


def sum_equals(s: System, parts: pd.DataFrame, totals: pd.DataFrame, label: str) -> None:
    """total(key) = sum of parts(key)."""
    parts, totals, codes = _split(parts, totals)
    if not len(codes):
        return
    rp, rt = codes.get_indexer(parts["key"]), codes.get_indexer(totals["key"])
    s.add(np.r_[rt, rp], np.r_[totals["row"].to_numpy(), parts["row"].to_numpy()],
          np.r_[np.ones(len(rt)), -np.ones(len(rp))], len(codes), label)


def sum_at_least(s: System, parts: pd.DataFrame, totals: pd.DataFrame, label: str) -> None:
    """total(key) <= sum of parts(key) (a person can count in several parts): total + slack = sum."""
    parts, totals, codes = _split(parts, totals)
    if not len(codes):
        return
    slack = s.new_hidden(len(codes), protect=False)
    rp, rt = codes.get_indexer(parts["key"]), codes.get_indexer(totals["key"])
    k = np.arange(len(codes))
    s.add(np.r_[rt, rp, k], np.r_[totals["row"].to_numpy(), parts["row"].to_numpy(), slack],
          np.r_[np.ones(len(rt)), -np.ones(len(rp)), np.ones(len(k))], len(codes), label)


def each_at_most(s: System, parts: pd.DataFrame, totals: pd.DataFrame, label: str, *, protect: bool = True) -> None:
    """part <= total(key) for every part: part + complement = total; the complement is protected."""
    parts, totals, _ = _split(parts, totals)
    if not len(parts):
        return
    t_row = pd.Series(totals["row"].to_numpy(), index=totals["key"].to_numpy())
    trow = t_row.loc[parts["key"]].to_numpy()
    m = len(parts)
    slack = s.new_hidden(m, protect=protect)
    k = np.arange(m)
    s.add(np.r_[k, k, k], np.r_[parts["row"].to_numpy(), slack, trow],
          np.r_[np.ones(m), np.ones(m), -np.ones(m)], m, label)


def at_most(s: System, small: np.ndarray, big: np.ndarray, label: str, *, protect: bool = False) -> None:
    """small[i] <= big[i] pairwise."""
    small, big = np.asarray(small, dtype=np.int64), np.asarray(big, dtype=np.int64)
    m = len(small)
    if not m:
        return
    slack = s.new_hidden(m, protect=protect)
    k = np.arange(m)
    s.add(np.r_[k, k, k], np.r_[small, slack, big], np.r_[np.ones(m), np.ones(m), -np.ones(m)], m, label)


def identical(s: System, a: np.ndarray, b: np.ndarray, label: str) -> None:
    """a[i] = b[i] pairwise (the same quantity released in two tables)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    m = len(a)
    if not m:
        return
    k = np.arange(m)
    s.add(np.r_[k, k], np.r_[a, b], np.r_[np.ones(m), -np.ones(m)], m, label)


def chain(s: System, frame: pd.DataFrame, label: str, *, out_at_prev: bool = False) -> None:
    """Steps of a sequence: ``frame`` has key, order, and rows ``prev`` (a level at step k-1),
    ``cur`` (the level at step k) and ``out`` (one or more columns ``out*``: what left between).

    prev - cur - sum(out) = 0 for every consecutive pair within a key; columns hold row ids or -1.
    ``out_at_prev``: what left is recorded at step k-1 (risk tables), not at step k (attrition).
    """
    f = frame.sort_values(["key", "order"], kind="mergesort")
    outs = [c for c in f.columns if c.startswith("out")]
    g = f.groupby("key")
    if out_at_prev:
        f = f.assign(**{c: g[c].shift(1) for c in outs})
    level_prev = g["cur"].shift(1)
    first = level_prev.isna()
    f = f.assign(prev=level_prev)[~first]
    f = f[(f["prev"] >= 0) & (f["cur"] >= 0)]
    for c in outs:
        f = f[f[c] >= 0]
    m = len(f)
    if not m:
        return
    k = np.arange(m)
    rels = [k, k] + [k] * len(outs)
    vars_ = [f["prev"].to_numpy(dtype=np.int64), f["cur"].to_numpy(dtype=np.int64)] + [
        f[c].to_numpy(dtype=np.int64) for c in outs]
    coefs = [np.ones(m), -np.ones(m)] + [-np.ones(m)] * len(outs)
    s.add(np.concatenate(rels), np.concatenate(vars_), np.concatenate(coefs), m, label)
