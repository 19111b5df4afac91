"""Disclosure control shared by site and coordinator: declared relations, an exact audit, secondary suppression.

* :mod:`.declarations`: the relations of every released result type (a type without one is
  not released: :class:`~optima_common.errors.DisclosureError`);
* :mod:`.solve`: feasible intervals (algebra for one relation, HiGHS for several);
* :mod:`.audit`: the rule every withheld count must pass, and secondary suppression;
* :func:`protect` (site, before signing) and :func:`check_release` (coordinator, on every
  bundle it verifies or ingests) run the same audit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from optima_common.disclosure import audit as A
from optima_common.disclosure import declarations as D
from optima_common.disclosure.frame import audit_frame
from optima_common.errors import DisclosureError
from optima_common.results import SUPPRESSED, SummarisedResult

__all__ = ["Protection", "SiteFacts", "audit_frame", "check_release", "protect", "require_declared"]


@dataclass(frozen=True)
class SiteFacts:
    """What the site knows and does not release: persons per cohort and shared by each pair of cohorts."""

    subjects: dict[str, int]
    both: dict[tuple[str, str], int]  # (a, b) with a < b

    def add_to(self, p: A.Problem) -> None:
        s, co = p.built.system, p.built.cohorts
        for name, n in sorted(self.subjects.items()):
            v = co.var(name)
            if v >= s.n:
                s.hidden_value[v - s.n] = float(n)
        for (a, b), both in sorted(self.both.items()):
            na, nb = self.subjects.get(a), self.subjects.get(b)
            if na is None or nb is None:
                continue
            vals = np.array([na - both, nb - both, both], dtype=float)
            h = s.new_hidden(3, protect=True, value=vals)
            s.add(np.array([0, 0, 0, 1, 1, 1]), [h[0], h[2], co.var(a), h[1], h[2], co.var(b)],
                  [1.0, 1.0, -1.0, 1.0, 1.0, -1.0], 2,
                  [f"site-only: persons in {a} = only {a} + in both {a} and {b}",
                   f"site-only: persons in {b} = only {b} + in both {a} and {b}"])
            for v, val in zip(h, vals):
                if val == 0:  # a structural zero (one cohort inside the other) is assumed known
                    p.fixed_hidden[int(v)] = 0.0


@dataclass
class Protection:
    result: SummarisedResult
    secondary: dict[int, str]  # row -> relation label, in ``result.data`` order
    derived: int  # derived estimates withheld
    seconds: float
    stats: dict = field(default_factory=dict)

    def secondary_frame(self) -> pd.DataFrame:
        """The secondary suppressions and why (for the review page)."""
        d = self.result.data
        rows = sorted(self.secondary)
        out = d.iloc[rows][["result_id", "group_level", "strata_level", "variable_name", "variable_level",
                            "estimate_name"]].copy()
        rt = dict(zip(self.result.settings["result_id"], self.result.settings["result_type"]))
        out.insert(0, "result_type", out["result_id"].map(rt))
        out["relation"] = [self.secondary[r] for r in rows]
        return out.drop(columns="result_id").reset_index(drop=True)


def require_declared(result: SummarisedResult) -> None:
    missing = D.undeclared(result.settings["result_type"])
    if missing:
        raise DisclosureError(f"result type(s) {', '.join(missing)} declare no relations; not released",
                              hint="declare them in optima_common/disclosure/declarations.py")


def protect(raw: SummarisedResult, primary: SummarisedResult, min_cell_count: int, *,
            facts: SiteFacts | None = None, anchors: dict | None = None,
            rounding: int = 0) -> Protection:
    """Site side: secondary suppression on ``primary`` (``raw`` after primary suppression, same rows)
    until the audit passes, then every derived estimate of a withheld count withheld."""
    started = time.perf_counter()
    require_declared(primary)
    if min_cell_count < 2 or primary.data.empty:
        return Protection(primary, {}, 0, time.perf_counter() - started)
    f = audit_frame(primary)
    true = pd.to_numeric(raw.data["estimate_value"], errors="coerce").to_numpy(dtype=float)
    true[f["rounding"].str.startswith("nearest_").to_numpy(dtype=bool)] = np.nan  # a rounded count is not the truth
    built = D.build_system(f)
    p = A.problem(f, built, true)
    if facts is not None:
        facts.add_to(p)
        p = _refresh(p)
    A.fill_hidden_truth(p)
    stats: dict = {}
    sup0 = f["suppressed"].to_numpy()
    sup, reasons = A.secondary_suppression(p, sup0, min_cell_count, anchors=anchors, rounding=rounding, stats=stats)
    derived = D.derived_mask(f, sup, built.cohorts)
    mask = sup | derived
    newly = mask & (primary.data["estimate_value"] != SUPPRESSED).to_numpy()
    out = primary.with_suppressed(mask)
    return Protection(out, reasons, int((derived & newly).sum()), time.perf_counter() - started, stats)


def _refresh(p: A.Problem) -> A.Problem:
    """Rebuild term arrays and hidden flags after facts added relations and variables."""
    q = A.problem(p.frame, p.built, p.true[: p.n])
    q.fixed_hidden = p.fixed_hidden
    return q


def check_release(result: SummarisedResult, min_cell_count: int) -> list[str]:
    """Coordinator side: what is wrong with a released table (empty list: it passes).

    A count between 1 and min-1; an undeclared result type; a withheld count or protected hidden
    quantity that the declared relations narrow down; a derived estimate of a withheld count.
    """
    if min_cell_count < 2 or result.data.empty:
        return []
    problems: list[str] = []
    f = audit_frame(result)
    small = f["is_count"].to_numpy() & (f["num"] > 0).to_numpy() & (f["num"] < min_cell_count).to_numpy()
    if small.any():
        r = f[small].iloc[0]
        problems.append(f"{int(small.sum())} count(s) between 1 and {min_cell_count - 1}, e.g. "
                        f"{r['result_type']} {r['variable_name']}/{r['estimate_name']} = {r['estimate_value']}")
        return problems
    missing = D.undeclared(result.settings["result_type"])
    if missing:
        return [f"result type(s) {', '.join(missing)} declare no relations"]
    built = D.build_system(f)
    p = A.problem(f, built)
    sup = f["suppressed"].to_numpy()
    bad = A.findings(p, sup, min_cell_count)
    if bad:
        v, lo, hi = bad[0]
        what = (f"{f['result_type'].iat[v]} {f['group_level'].iat[v]} {f['variable_name'].iat[v]}/"
                f"{f['estimate_name'].iat[v]}" if v < p.n else "a complement of released counts")
        problems.append(f"{len(bad)} withheld quantit{'y' if len(bad) == 1 else 'ies'} can be narrowed down, "
                        f"e.g. {what} to [{lo:g}, {hi:g}]")
    derived = D.derived_mask(f, sup, built.cohorts) & ~sup
    if derived.any():
        r = f[derived].iloc[0]
        problems.append(f"{int(derived.sum())} estimate(s) derived from withheld counts are released, e.g. "
                        f"{r['result_type']} {r['variable_name']}/{r['estimate_name']}")
    return problems


_PASSED: dict[tuple[str, int], bool] = {}  # (sha256 of a table, minimum) that passed, this process only


def audit_bundle_table(results_csv: str, min_cell_count: int, where: str) -> SummarisedResult | None:
    """Coordinator: refuse (one-line :class:`DisclosureError`) a bundle table that fails :func:`check_release`;
    return the table as read (the same reader as from a file), which passed.

    A table that passed once in this process (same bytes, same minimum) is not audited again
    (``verify`` then ``ingest`` of one bundle; then None is returned); the memory never leaves the
    process."""
    import hashlib

    memo = (hashlib.sha256(results_csv.encode("utf-8")).hexdigest(), int(min_cell_count))
    if memo in _PASSED:
        return None

    table = SummarisedResult.from_csv_text(results_csv, source=where)  # the same reader as from a file
    problems = check_release(table, min_cell_count)
    if problems:
        raise DisclosureError(f"{where}: refused by the disclosure audit: {problems[0]}")
    _PASSED[memo] = True
    return table
