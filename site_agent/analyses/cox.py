"""Site side of a federated, site-stratified Cox proportional hazards model (Breslow ties).

Mirrors R ``survival::coxph(Surv(time, status) ~ covariates + strata(site), ties = "breslow")``
split across sites: every site is its own stratum with its own baseline hazard, so the
network's partial log-likelihood is the sum of the sites' partial log-likelihoods, and so
are its score vector and information matrix. A site therefore only ever answers one
question: "at coefficients ``beta``, what are your log partial likelihood, score (p values)
and observed information (p x p)?" The coordinator (``coordinator.pooling.cox``) sums and runs
Newton-Raphson. Patient rows stay here; only these p + p^2 + 1 aggregates leave.

A coordinator that may ask at arbitrary ``beta`` could try to reconstruct rows from many
answers, so every answer goes through a :class:`CoxGuard` that limits the number of
answers per study manifest, refuses sites with too few events, and refuses absurd ``beta``.

Deviations from ``coxph``: Breslow ties only (coxph defaults to Efron); no robust
variance, weights, offsets or time-varying covariates; covariates are encoded by
:func:`design_matrix` from a fixed study-wide level list, never from the data at hand
(R's ``model.matrix`` takes levels from the data, which would differ between sites).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from optima_common.errors import CoxRefusal
from optima_common.protocol import COX_MAX_ABS_BETA

if TYPE_CHECKING:  # numpy only at import: a Cox answer from the cached design runs in a fresh process per message
    import pandas as pd

    from site_agent.cdm.connection import CdmConnection

MAX_ABS_BETA = COX_MAX_ABS_BETA


@dataclass(frozen=True)
class SiteCoxData:
    """One site's per-patient Cox data; never leaves the site.

    ``X`` is the n x p design matrix (float64), ``time`` the follow-up in days and
    ``event`` 1 for an event, 0 for censoring.
    """

    X: np.ndarray
    time: np.ndarray
    event: np.ndarray
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        X = np.asarray(self.X, dtype=np.float64)
        time = np.asarray(self.time, dtype=np.float64)
        event = np.asarray(self.event)
        if X.ndim != 2 or time.ndim != 1 or event.ndim != 1 or not (len(X) == len(time) == len(event)):
            raise ValueError(f"SiteCoxData: X must be n x p and time, event length n; got "
                             f"{X.shape}, {time.shape}, {event.shape}")
        if not np.isin(event, (0, 1)).all():
            raise ValueError("SiteCoxData: event must be 0/1")
        if not (np.isfinite(X).all() and np.isfinite(time).all()) or (time < 0).any():
            raise ValueError("SiteCoxData: X and time must be finite, time >= 0")
        if self.columns and len(self.columns) != X.shape[1]:
            raise ValueError(f"SiteCoxData: {len(self.columns)} column names for {X.shape[1]} columns")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "event", event.astype(np.float64))

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_events(self) -> int:
        return int(self.event.sum())


def site_score_information(data: SiteCoxData, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Breslow log partial likelihood, score and observed information of one stratum at ``beta``.

    With risk set R(t) = {j : T_j >= t}, d_k events at distinct event time t_k and
    S0, S1, S2 the sums of w_j = exp(x_j'beta), w_j x_j, w_j x_j x_j' over R(t_k):
    loglik = sum_events x_i'beta - sum_k d_k log S0_k; score = sum_events x_i - sum_k d_k S1_k/S0_k;
    information = sum_k d_k (S2_k/S0_k - (S1_k/S0_k)(S1_k/S0_k)').
    Vectorised: sort by time, reverse cumulative sums, one risk set per distinct time
    (Breslow: tied events share it). sum_k d_k S2_k/S0_k is computed as
    X' diag(w_j H_j) X with H_j = sum_{t_k <= T_j} d_k/S0_k, so no n x p x p array is built.
    """
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    p = data.p
    if beta.shape != (p,):
        raise ValueError(f"beta has {beta.size} values for {p} covariates")
    if data.n_events == 0:
        return 0.0, np.zeros(p), np.zeros((p, p))
    order = np.argsort(data.time, kind="stable")
    X, t, d = data.X[order], data.time[order], data.event[order]
    eta = X @ beta
    shift = eta.max()  # exp(eta - shift) <= 1: no overflow; cancels in every ratio
    w = np.exp(eta - shift)
    # distinct times: first index of each tied group in ascending order
    uniq, first = np.unique(t, return_index=True)
    group = np.searchsorted(uniq, t)
    s0_all = np.cumsum(w[::-1])[::-1]
    s1_all = np.cumsum((w[:, None] * X)[::-1], axis=0)[::-1]
    s0, s1 = s0_all[first], s1_all[first]  # sums over the risk set of each distinct time
    d_k = np.bincount(group, weights=d, minlength=len(uniq))
    has = d_k > 0
    loglik = float(eta[d == 1].sum() - (d_k[has] * (np.log(s0[has]) + shift)).sum())
    xbar = s1[has] / s0[has, None]  # risk-weighted mean covariate at each event time
    score = X[d == 1].sum(axis=0) - (d_k[has, None] * xbar).sum(axis=0)
    h_k = np.where(has, d_k / s0, 0.0)
    h_cum = np.cumsum(h_k)[group]  # H_j: event times at or before T_j
    info = (X * (w * h_cum)[:, None]).T @ X - (xbar * d_k[has, None]).T @ xbar
    info = (info + info.T) / 2.0
    return loglik, score, info


@dataclass
class CoxGuard:
    """Answers Cox requests for one site's data, within a per-manifest budget.

    ``answer(manifest_id, beta)`` refuses (:class:`CoxRefusal`, a ``ValueError``) when the
    site has fewer than ``min_events`` events, when ``max_iterations`` answers were already
    given for that manifest id (so at most ``max_iterations`` answers per manifest: a
    coordinator cannot probe with arbitrarily many chosen coefficients), and when ``beta``
    has the wrong length, a non-finite value or a magnitude above 20 (a log hazard ratio
    of 20 is a hazard ratio of 5e8: no real fit gets there, a probe might).
    Refused requests do not use the budget.
    """

    max_iterations: int
    min_events: int
    data: SiteCoxData
    _answers: dict[str, int] = field(default_factory=dict, repr=False)

    def answers_given(self, manifest_id: str) -> int:
        return self._answers.get(manifest_id, 0)

    def answer(self, manifest_id: str, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.data.n_events < self.min_events:
            # the refusal leaves the site: it must not tell how many events there are
            raise CoxRefusal(f"Cox refused: the site has fewer events than the minimum of {self.min_events}")
        used = self.answers_given(manifest_id)
        if used >= self.max_iterations:
            raise CoxRefusal(f"Cox refused: manifest '{manifest_id}' already received {used} answers "
                             f"(budget {self.max_iterations})")
        b = np.asarray(beta, dtype=np.float64).reshape(-1)
        if b.shape != (self.data.p,):
            raise CoxRefusal(f"Cox refused: beta has {b.size} values, the model has {self.data.p} covariates")
        if not np.isfinite(b).all():
            raise CoxRefusal("Cox refused: beta has non-finite values")
        if np.abs(b).max(initial=0.0) > MAX_ABS_BETA:
            raise CoxRefusal(f"Cox refused: |beta| above {MAX_ABS_BETA:g} (hazard ratio beyond exp(20))")
        out = site_score_information(self.data, b)
        self._answers[manifest_id] = used + 1
        return out


def design_matrix(
    df: pd.DataFrame,
    covariates: Sequence[str],
    categorical_levels: Mapping[str, Sequence[str]],
    scale: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Design matrix with study-fixed columns, identical at every site.

    A covariate listed in ``categorical_levels`` is one-hot encoded against its FIRST level
    (the reference), one column per other level in the given order, named
    ``f"{covariate}{level}"`` as R's ``model.matrix`` names them (``sexMale``); a level
    absent at this site still gets its column (all zeros). A value not in the list, or
    missing, raises (the study spec must name every level). Other covariates are numeric,
    divided by ``scale[covariate]`` if given (age per 10 years: ``scale={"age": 10}``).
    """
    import pandas as pd

    scale = dict(scale or {})
    cols: list[np.ndarray] = []
    names: list[str] = []
    for cov in covariates:
        if cov not in df.columns:
            raise ValueError(f"design_matrix: no column '{cov}'")
        values = df[cov]
        if values.isna().any():
            raise ValueError(f"design_matrix: '{cov}' has missing values")
        if cov in categorical_levels:
            levels = [str(v) for v in categorical_levels[cov]]
            if len(levels) < 2 or len(set(levels)) != len(levels):
                raise ValueError(f"design_matrix: '{cov}' needs >= 2 distinct levels, got {levels}")
            as_text = values.astype(str)
            unknown = sorted(set(as_text) - set(levels))
            if unknown:
                raise ValueError(f"design_matrix: '{cov}' has levels {unknown} not in the study spec {levels}")
            for level in levels[1:]:
                cols.append((as_text == level).to_numpy(dtype=np.float64))
                names.append(f"{cov}{level}")
        else:
            num = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64)
            cols.append(num / float(scale.get(cov, 1.0)))
            names.append(cov)
    X = np.column_stack(cols) if cols else np.zeros((len(df), 0))
    return X, names


def cohort_survival_rows(
    cdm: CdmConnection,
    target_cohort_id: int,
    outcome_cohort_id: int,
    flag_cohorts: Mapping[str, tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Per-patient rows (SQL in the database) for a Cox model; stays at the site.

    One row per target cohort entry: ``subject_id``, ``age`` (year of index - year of
    birth, as Circe), ``sex`` (Male/Female/Other from gender_concept_id 8507/8532),
    ``event`` (1 if an outcome cohort entry starts on or after index, within the index
    observation period), ``time`` (days from index to the first such outcome, else to the
    end of the observation period holding the index) and, for each ``name: (cohort_id,
    days)`` in ``flag_cohorts``, a 0/1 column: an entry of that cohort 0..days after index.
    """
    import pandas as pd

    ws, cs = cdm.write_schema, cdm.cdm_schema
    flags = dict(flag_cohorts or {})
    for name in flags:
        if not name.isidentifier():
            raise ValueError(f"flag name '{name}' is not an identifier")
    flag_sql = "".join(
        f", CASE WHEN EXISTS (SELECT 1 FROM {ws}.cohort f WHERE f.cohort_definition_id = {int(cid)} "
        f"AND f.subject_id = t.subject_id AND f.cohort_start_date >= t.cohort_start_date "
        f"AND f.cohort_start_date - t.cohort_start_date <= {int(days)}) THEN 1 ELSE 0 END AS {name}"
        for name, (cid, days) in flags.items()
    )
    sql = f"""
WITH t AS (
  SELECT c.subject_id, c.cohort_start_date, op.observation_period_end_date AS obs_end
  FROM {ws}.cohort c
  JOIN {cs}.observation_period op ON op.person_id = c.subject_id
   AND op.observation_period_start_date <= c.cohort_start_date
   AND op.observation_period_end_date >= c.cohort_start_date
  WHERE c.cohort_definition_id = {int(target_cohort_id)}
), o AS (
  SELECT t.subject_id, t.cohort_start_date, MIN(x.cohort_start_date) AS outcome_date
  FROM t JOIN {ws}.cohort x ON x.subject_id = t.subject_id
   AND x.cohort_definition_id = {int(outcome_cohort_id)}
   AND x.cohort_start_date >= t.cohort_start_date AND x.cohort_start_date <= t.obs_end
  GROUP BY t.subject_id, t.cohort_start_date
)
SELECT t.subject_id,
  EXTRACT(YEAR FROM t.cohort_start_date) - p.year_of_birth AS age,
  CASE p.gender_concept_id WHEN 8507 THEN 'Male' WHEN 8532 THEN 'Female' ELSE 'Other' END AS sex,
  CASE WHEN o.outcome_date IS NULL THEN 0 ELSE 1 END AS event,
  COALESCE(o.outcome_date, t.obs_end) - t.cohort_start_date AS time{flag_sql}
FROM t JOIN {cs}.person p ON p.person_id = t.subject_id
LEFT JOIN o ON o.subject_id = t.subject_id AND o.cohort_start_date = t.cohort_start_date
ORDER BY t.subject_id, t.cohort_start_date
"""
    df = cdm.query_df(sql)
    for col in ("age", "event", "time", *flags):
        df[col] = pd.to_numeric(df[col]).astype(np.int64)
    return df
