"""Risk tables released from rounded cumulative counts (as OpenSAFELY's Kaplan-Meier action does).

A curve of a small stratum has 1..min-1 events in most grid intervals; withholding each of
them (and, through ``n_risk(k+1) = n_risk(k) - events - censored``, everything after it) leaves
nothing to pool. Instead every count of the released risk table is a multiple of the base
``b`` (the minimum cell count), built from rounded *cumulative* counts, and the curve's
estimates are recomputed from the rounded table:

* ``N_r`` = the stratum size rounded to the nearest multiple of ``b`` (at least ``b``);
* ``R_r(k)`` = persons who left by ``t_k`` (events of any cause and censored, cumulative),
  rounded to the nearest multiple of ``b``, kept non-decreasing and at most ``N_r``, and
  ``N_r`` at the last grid time (everyone has left by then);
* per cause, ``E_r(k)`` = cumulative events rounded to the nearest multiple of ``b``, kept
  non-decreasing and within what left in the interval;
* released: ``n_risk(k) = N_r - R_r(k-1)``, events ``E_r(k) - E_r(k-1)``, censored = what left
  minus the events. All non-negative multiples of ``b``, none between 1 and ``b - 1``, and the
  chain ``n_risk(k+1) = n_risk(k) - events(k) - censored(k)`` holds exactly on them.

What a reader learns: every cumulative count to within about ``b/2`` (nearest rounding), never an
exact count; the released counts of different strata no longer add up to the overall curve's
(each is rounded on its own), so that relation is not declared for rounded tables. The setting
``count_rounding = "cumulative_<b>"`` says so, for the audit and for readers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SETTING = "count_rounding"


def setting_value(base: int) -> str:
    return f"cumulative_{int(base)}"


def _nearest(x: np.ndarray, base: int) -> np.ndarray:
    return base * np.floor(np.asarray(x, dtype=float) / base + 0.5)


def round_risk_table(table: pd.DataFrame, base: int, events: tuple[str, ...] = ("n_event",)) -> pd.DataFrame:
    """``table`` (time, n_risk, the ``events`` columns, n_censor; one row per grid time, rows
    ordered by time) with every count replaced by its rounded release (see module doc)."""
    if base < 2 or table.empty:
        return table.copy()
    n0 = float(table["n_risk"].iloc[0])
    left = np.cumsum(table[list(events)].sum(axis=1).to_numpy(float) + table["n_censor"].to_numpy(float))
    n_r = 0.0 if n0 == 0 else max(_nearest(np.array([n0]), base)[0], float(base))
    r_r = np.minimum(np.maximum.accumulate(_nearest(left, base)), n_r)
    r_r[-1] = n_r
    step = np.diff(np.r_[0.0, r_r])  # what left in each interval (rounded)
    room = step.copy()
    out = table.copy()
    for col in events:
        e_true = _nearest(np.cumsum(table[col].to_numpy(float)), base)
        e_r = np.zeros(len(table))
        prev = 0.0
        for k in range(len(table)):  # a few dozen grid times: plain loop
            e_r[k] = min(max(e_true[k], prev), prev + room[k])
            room[k] -= e_r[k] - prev
            prev = e_r[k]
        out[col] = np.diff(np.r_[0.0, e_r]).astype("int64")
    out["n_censor"] = room.astype("int64")
    out["n_risk"] = (n_r - np.r_[0.0, r_r[:-1]]).astype("int64")
    return out
