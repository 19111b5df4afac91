"""Outcomes at the study's horizons and the cumulative incidence of progression (competing death).

Per-patient inputs (days from the index date, computed at the site, never returned):
``time_to_progression`` and ``time_to_death`` (NaN = no such event recorded) and
``followup_end`` (days to the end of observation).  Definitions:

* progression is *observed* if recorded, ``<= followup_end`` and not after death (a
  progression on the day of death counts as progression); death is observed if recorded and
  ``<= followup_end``;
* **within X** days: observed event at day ``<= X``; ``population_count`` = the whole target
  cohort (stratum) and ``percentage`` = 100 * count / population (a crude proportion:
  patients censored before X without the event stay in the denominator; the cumulative
  incidence below is the censoring-aware estimate);
* **after X** days: observed event at day ``> X`` among the patients *followed beyond X*
  (event-free and under observation at day X: min(event time, followup end) ``> X``);
  ``population_count`` = that number, ``percentage`` = 100 * count / population.

Horizons (the seed's): within 3, 6, 9, 12, 18, 24 months, 5 years; after 3 months and after
10 years, with months = 30.4375 days (3 -> 91, 6 -> 183, 9 -> 274, 12 -> 365, 18 -> 548,
24 -> 730, 5 y -> 1826, 10 y -> 3652).

**Cumulative incidence** (CohortSurvival ``estimateCompetingRiskSurvival``, which uses
``survival::survfit`` with a multi-state outcome, i.e. Aalen-Johansen): the first event per
patient (progression, death without progression = competing, or censoring at follow-up
end) is discretised to the study grid exactly as in :mod:`site_agent.analyses.survival`
(ceiling to the grid; after the grid -> censored at its end), giving per grid time
``n_risk``, ``n_events`` (progression), ``n_competing_events`` (death) and ``n_censor``.
From these: ``S(t_k) = S(t_{k-1}) (1 - (d1+d2)/n)``, ``CIF1(t_k) = CIF1(t_{k-1}) + S(t_{k-1}) d1/n``
(and the same for death).  The counts pool exactly across sites.  Released as
``cumulative_incidence`` (estimates; variable_level = outcome) and
``cumulative_incidence_events`` (counts; ``*_count`` names so suppression applies).
Deviations: no confidence intervals for the CIF (CohortSurvival reports survfit's); result
type names are ours (CohortSurvival writes ``survival_estimates``/``survival_events`` with
``analysis_type = competing_risk``, or ``cumulative_failure_probability`` in another
version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from optima_common.results import OVERALL, RESULT_COLUMNS, SummarisedResult
from site_agent.analyses.survival import check_grid, grid_index, risk_table
from site_agent.diagnostics.base import fmt_float, settings_row

RESULT_TYPES = ("outcome_horizons", "cumulative_incidence", "cumulative_incidence_events")
#: (label, kind, days)
DEFAULT_WINDOWS: tuple[tuple[str, str, int], ...] = (
    ("within 3 months", "within", 91), ("after 3 months", "after", 91),
    ("within 6 months", "within", 183), ("within 9 months", "within", 274),
    ("within 12 months", "within", 365), ("within 18 months", "within", 548),
    ("within 24 months", "within", 730), ("within 5 years", "within", 1826),
    ("after 10 years", "after", 3652),
)
CENSOR, PROGRESSION, DEATH = 0, 1, 2


def observed_events(time_to_progression: np.ndarray, time_to_death: np.ndarray,
                    followup_end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(progression day or NaN, death day or NaN, follow-up end) after the observation rules."""
    p = np.asarray(time_to_progression, dtype=float)
    d = np.asarray(time_to_death, dtype=float)
    f = np.asarray(followup_end, dtype=float)
    if not (len(p) == len(d) == len(f)) or np.isnan(f).any() or (f < 0).any():
        raise ValueError("arrays must have equal length; followup_end non-negative and not missing")
    with np.errstate(invalid="ignore"):
        d = np.where(d <= f, d, np.nan)
        p = np.where((p <= f) & ~(p > d), p, np.nan)
    return p, d, f


def first_event(time_to_progression: np.ndarray, time_to_death: np.ndarray,
                followup_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time and cause (0 censored, 1 progression, 2 death without progression) of the first event."""
    p, d, f = observed_events(time_to_progression, time_to_death, followup_end)
    cause = np.where(~np.isnan(p), PROGRESSION, np.where(~np.isnan(d), DEATH, CENSOR))
    time = np.where(cause == PROGRESSION, p, np.where(cause == DEATH, d, f))
    return time, cause


def competing_risk_table(time: np.ndarray, cause: np.ndarray, grid: Sequence[int]) -> pd.DataFrame:
    """Per grid time: ``n_risk``, ``n_event`` (cause 1), ``n_competing`` (cause 2), ``n_censor``."""
    g = check_grid(grid)
    c = np.asarray(cause)
    if len(c) != len(time) or not np.isin(c, (CENSOR, PROGRESSION, DEATH)).all():
        raise ValueError("cause must be 0/1/2 and as long as time")
    idx = grid_index(time, g)
    c = np.where(np.asarray(time, dtype=float) <= g[-1], c, CENSOR)  # after the grid: censored at its end
    counts = {k: np.bincount(idx[c == v], minlength=len(g)) for k, v in
              (("n_event", PROGRESSION), ("n_competing", DEATH), ("n_censor", CENSOR))}
    n = (counts["n_event"] + counts["n_competing"] + counts["n_censor"])[::-1].cumsum()[::-1]
    return pd.DataFrame({"time": g, "n_risk": n, **counts}).astype("int64")


def aalen_johansen_from_table(table: pd.DataFrame) -> pd.DataFrame:
    """Adds ``survival`` (event-free), ``cif`` (cause 1) and ``cif_competing`` (cause 2)."""
    n = table["n_risk"].to_numpy(dtype=float)
    d1 = table["n_event"].to_numpy(dtype=float)
    d2 = table["n_competing"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1, h2 = np.where(n > 0, d1 / n, 0.0), np.where(n > 0, d2 / n, 0.0)
    surv = np.cumprod(1.0 - h1 - h2)
    prev = np.concatenate([[1.0], surv[:-1]])
    out = table.copy()
    out["survival"], out["cif"], out["cif_competing"] = surv, np.cumsum(prev * h1), np.cumsum(prev * h2)
    return out


def horizon_counts(p: np.ndarray, d: np.ndarray, f: np.ndarray,
                   windows: Sequence[tuple[str, str, int]] = DEFAULT_WINDOWS) -> list[dict]:
    """Rows (outcome, label, count, population) per window, from :func:`observed_events` arrays."""
    n = len(f)
    out = []
    for outcome, ev, censor_time in (("progression", p, np.fmin(np.fmin(p, d), f)), ("death", d, np.fmin(d, f))):
        for label, kind, x in windows:
            if kind == "within":
                cnt, pop = int(np.sum(ev <= x)), n
            elif kind == "after":
                cnt, pop = int(np.sum(ev > x)), int(np.sum(censor_time > x))
            else:
                raise ValueError(f"window kind must be 'within' or 'after', got {kind!r}")
            out.append({"outcome": outcome, "label": label, "count": cnt, "population": pop})
    return out


def summarise_outcomes(cdm_name: str, target_name: str, strata: Mapping[str, pd.DataFrame],
                       grid: Sequence[int], *, strata_name: str = "treatment_sequence",
                       progression_name: str = "disease_progression", death_name: str = "death",
                       windows: Sequence[tuple[str, str, int]] = DEFAULT_WINDOWS,
                       count_rounding: int = 0) -> SummarisedResult:
    """``outcome_horizons`` (1), ``cumulative_incidence`` (2), ``cumulative_incidence_events`` (3).

    ``strata`` maps a level (``"overall"`` = unstratified) to per-patient rows with columns
    ``time_to_progression``, ``time_to_death``, ``followup_end``.  Unsuppressed.
    ``count_rounding`` (a base >= 2): the cumulative-incidence risk tables are released from
    rounded cumulative counts, the curves recomputed from them, and the horizon counts are read off
    the same rounded tables (:func:`rounded_horizon_counts`).
    """
    from site_agent.analyses.rounding import SETTING, round_risk_table, setting_value

    g = check_grid(grid)
    names = {"progression": progression_name, "death": death_name}
    rows: list[dict] = []
    base = {"cdm_name": cdm_name, "group_name": "target_cohort", "group_level": target_name,
            "additional_name": OVERALL, "additional_level": OVERALL}
    for level in sorted(strata):
        df = strata[level]
        st = {"strata_name": OVERALL, "strata_level": OVERALL} if level == OVERALL else \
            {"strata_name": strata_name, "strata_level": str(level)}
        args = (df["time_to_progression"].to_numpy(), df["time_to_death"].to_numpy(), df["followup_end"].to_numpy())
        p, d, f = observed_events(*args)
        rows.append({**base, **st, "result_id": 1, "variable_name": "Number subjects", "variable_level": None,
                     "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(len(f))})
        horizons = horizon_counts(p, d, f, windows)
        if count_rounding >= 2:  # read off the released rounded tables: no exact count beside the curves
            horizons = rounded_horizon_counts(horizons, p, d, f, g, count_rounding, windows)
        for h in horizons:
            cell = {**base, **st, "result_id": 1, "variable_name": names[h["outcome"]], "variable_level": h["label"]}
            pct = 100.0 * h["count"] / h["population"] if h["population"] else None
            rows += [{**cell, "estimate_name": "count", "estimate_type": "integer", "estimate_value": str(h["count"])},
                     {**cell, "estimate_name": "population_count", "estimate_type": "integer",
                      "estimate_value": str(h["population"])},
                     {**cell, "estimate_name": "percentage", "estimate_type": "percentage",
                      "estimate_value": None if pct is None else fmt_float(pct)}]
        aj = aalen_johansen_from_table(round_risk_table(competing_risk_table(*first_event(*args), g), count_rounding,
                                                        events=("n_event", "n_competing")))
        for r in aj.itertuples(index=False):
            t = {**base, **st, "additional_name": "time", "additional_level": str(int(r.time)),
                 "variable_name": "outcome", "variable_level": progression_name}
            for est, val in (("n_risk_count", r.n_risk), ("n_events_count", r.n_event),
                             ("n_competing_events_count", r.n_competing), ("n_censor_count", r.n_censor)):
                rows.append({**t, "result_id": 3, "estimate_name": est, "estimate_type": "numeric",
                             "estimate_value": str(int(val))})
            if r.n_risk > 0:
                for lvl, val in ((progression_name, r.cif), (death_name, r.cif_competing)):
                    rows.append({**t, "variable_level": lvl, "result_id": 2, "estimate_name": "estimate",
                                 "estimate_type": "numeric", "estimate_value": fmt_float(float(val))})
    common = {"outcome": progression_name, "competing_outcome": death_name,
              "time_grid": ",".join(str(int(x)) for x in g), "time_discretisation": "ceiling_to_grid",
              "windows": ";".join(f"{lab}:{kind}:{x}" for lab, kind, x in windows)}
    settings = [settings_row(1, RESULT_TYPES[0], **common),
                settings_row(2, RESULT_TYPES[1], analysis_type="competing_risk", **common),
                settings_row(3, RESULT_TYPES[2], analysis_type="competing_risk", **common)]
    if count_rounding >= 2:
        for row in settings:
            row[SETTING] = setting_value(count_rounding)
    return SummarisedResult(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), pd.DataFrame(settings))


def rounded_horizon_counts(horizons: list[dict], p: np.ndarray, d: np.ndarray, f: np.ndarray,
                           grid, base: int, windows) -> list[dict]:
    """The horizon counts of one stratum (``outcomes.horizon_counts`` rows) as a release with rounded
    risk tables must show them, so that no exact count narrows the rounded curves:

    * "within X" with X a grid time: read off the *same* rounded cumulative table the study releases
      (deaths: the survival table; progression: the competing-risk table, whose first events are
      progression before death), i.e. the released events up to X summed; the horizon then says
      nothing the risk table does not;
    * "after X" with X a grid time before the last: its population (followed beyond X) is the
      rounded table's at-risk count at the next grid time; its count (events after X, beyond the
      grid too) is rounded to the nearest multiple of ``base``;
    * any other window: count and population rounded to the nearest multiple of ``base``, a
      "within" count kept between the table's values at the grid times around X.

    Counts never exceed the population, populations never the stratum size ``n`` (released
    exactly as the number of subjects). ``p``, ``d``, ``f``: ``outcomes.observed_events`` arrays."""
    from site_agent.analyses.rounding import _nearest, round_risk_table

    g = np.asarray(grid, dtype=float)
    n = len(f)
    death_time = np.where(np.isnan(d), f, d)
    tables = {"death": round_risk_table(risk_table(death_time, (~np.isnan(d)).astype(int), g), base)}
    time, cause = first_event(p, d, f)
    tables["progression"] = round_risk_table(competing_risk_table(time, cause, g), base,
                                             events=("n_event", "n_competing"))
    cum = {k: np.cumsum(t["n_event"].to_numpy(float)) for k, t in tables.items()}
    kinds = {label: (kind, x) for label, kind, x in windows}
    out = []
    for h in horizons:
        kind, x = kinds[h["label"]]
        c, t = cum[h["outcome"]], tables[h["outcome"]]
        on_grid = np.flatnonzero(g == x)
        if kind == "within":
            pop = float(n)
            if len(on_grid):
                cnt = c[on_grid[0]]
            else:
                cnt = _nearest(np.array([h["count"]]), base)[0]
                before, after = np.flatnonzero(g < x), np.flatnonzero(g > x)
                lo = c[before[-1]] if len(before) else 0.0
                hi = c[after[0]] if len(after) else np.inf
                cnt = min(max(cnt, lo), hi)
        else:
            if len(on_grid) and on_grid[0] + 1 < len(g):
                pop = float(t["n_risk"].iat[on_grid[0] + 1])
            else:
                pop = _nearest(np.array([h["population"]]), base)[0]
            cnt = _nearest(np.array([h["count"]]), base)[0]
        pop = min(pop, float(n))
        out.append({**h, "count": int(min(cnt, pop)), "population": int(pop)})
    return out
