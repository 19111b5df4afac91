"""Coordinator side of the federated, site-stratified Cox model: Newton-Raphson on sums.

Mirrors R ``survival::coxph(Surv(time, status) ~ x + strata(site), ties = "breslow")``
(``coxph.fit``: Newton-Raphson from beta = 0, step halving when the log partial likelihood
decreases, variance = inverse information at the estimate, Wald CIs). Each site is a
stratum, so the network's log partial likelihood, score and information are the sums of
the sites' answers (``site_agent.analyses.cox.site_score_information`` behind the site's
guard). The coordinator never sees patient rows; it only asks each site at the current
coefficients. Nothing is imported from the site agent: a site is any callable
``beta -> (loglik, score, information)``, in-process today and over the federation later.

Deviations from ``coxph.fit``: convergence is on the Newton step (max |step| <= tol *
(1 + max |beta|)) rather than on the relative log-likelihood change, so the estimate is
accurate to ``tol`` and not only the log-likelihood; no ``iter.max`` warning object, the
``converged`` flag says it. Every evaluation, step halvings included, costs one answer
from each site's budget (reported as ``evaluations``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

SiteAnswer = tuple[float, np.ndarray, np.ndarray]
Site = Callable[[np.ndarray], SiteAnswer]
Z_975 = float(stats.norm.ppf(0.975))
MAX_HALVINGS = 30
# Sites refuse |beta| > 20 (site_agent.analyses.cox.MAX_ABS_BETA): never ask beyond it. A
# coefficient still beyond DIVERGED at the end runs to infinity (monotone likelihood, e.g. a
# treatment level whose few patients all die first) and is reported not estimable, as
# coxph warns "coefficient may be infinite".
BETA_BOUND = 20.0
DIVERGED = 10.0


@dataclass(frozen=True)
class CoxFit:
    """A fitted stratified Cox model (coefficients are log hazard ratios)."""

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    covariance: np.ndarray
    hr: np.ndarray
    hr_lower: np.ndarray
    hr_upper: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    loglik: float
    loglik_null: float
    iterations: int
    evaluations: int
    converged: bool

    @property
    def lr_statistic(self) -> float:
        """Likelihood-ratio chi-square against beta = 0 (df = number of coefficients)."""
        return 2.0 * (self.loglik - self.loglik_null)

    def to_frame(self) -> pd.DataFrame:
        """One row per coefficient, as ``broom::tidy(coxph, exponentiate = TRUE, conf.int = TRUE)``."""
        return pd.DataFrame({
            "term": list(self.names), "coef": self.coef, "se": self.se, "hr": self.hr,
            "hr_lower": self.hr_lower, "hr_upper": self.hr_upper, "z": self.z, "p_value": self.p_value,
        })


def _pooled(sites: Sequence[Site], beta: np.ndarray, p: int) -> SiteAnswer:
    """Sum of the sites' answers at ``beta``, each checked for shape and finiteness."""
    loglik, score, info = 0.0, np.zeros(p), np.zeros((p, p))
    for i, site in enumerate(sites):
        ll, u, v = site(beta.copy())
        u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
        if u.shape != (p,) or v.shape != (p, p):
            raise ValueError(f"site {i} answered score {u.shape} / information {v.shape}, expected ({p},) / ({p}, {p})")
        if not (np.isfinite(ll) and np.isfinite(u).all() and np.isfinite(v).all()):
            raise ValueError(f"site {i} answered non-finite values")
        loglik += float(ll)
        score += u
        info += v
    return loglik, score, info


def _newton_step(score: np.ndarray, info: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(info, score)
    except np.linalg.LinAlgError:
        raise ValueError(
            "the pooled information matrix is singular: a covariate is constant (or collinear) "
            "in every site's events' risk sets; drop or merge it"
        ) from None


def fit_federated_cox(
    sites: Sequence[Site],
    p: int,
    *,
    tol: float = 1e-9,
    max_iter: int = 25,
    names: Sequence[str] | None = None,
) -> CoxFit:
    """Fit the site-stratified Cox model by Newton-Raphson on the summed site answers.

    Starts at beta = 0. Each iteration solves I(beta) step = U(beta); if the log partial
    likelihood at beta + step is lower, the step is halved (up to 30 times). Converged when
    max |step| <= tol * (1 + max |beta|). Standard errors from the inverse pooled
    information at the estimate; 95% Wald intervals exp(coef -/+ 1.96 se). Columns without
    information at any site (a level nobody has) are not estimable: coef/se NaN.
    """
    if p < 1:
        raise ValueError("p must be >= 1")
    if not sites:
        raise ValueError("no sites to fit")
    names = tuple(names) if names is not None else tuple(f"x{i + 1}" for i in range(p))
    if len(names) != p:
        raise ValueError(f"{len(names)} names for {p} coefficients")
    beta = np.zeros(p)
    loglik, score, info = _pooled(sites, beta, p)
    loglik_null = loglik
    # A column that is zero in every site's risk sets (e.g. a treatment level no site has)
    # carries no information: it is not estimable and stays at 0 (reported as NaN).
    free = np.diag(info) > 1e-12 * max(1.0, float(np.abs(np.diag(info)).max()))
    if not free.any():
        raise ValueError("no covariate carries information (no events, or every column constant)")
    evaluations, iterations, converged = 1, 0, False
    while iterations < max_iter:
        iterations += 1
        step = np.zeros(p)
        step[free] = _newton_step(score[free], info[np.ix_(free, free)])
        small = float(np.abs(step).max()) <= tol * (1.0 + float(np.abs(beta).max()))
        for _ in range(MAX_HALVINGS + 1):
            cand = beta + step
            if np.abs(cand).max() > BETA_BOUND:  # the sites would refuse: shorten the step first
                step = step / 2.0
                continue
            c_ll, c_score, c_info = _pooled(sites, cand, p)
            evaluations += 1
            # tiny tolerance: at the optimum the log-likelihood is flat to rounding error
            if c_ll >= loglik - 1e-12 * max(1.0, abs(loglik)):
                break
            step = step / 2.0
        else:
            break  # no ascent along the Newton direction: cannot improve further
        beta, loglik, score, info = cand, c_ll, c_score, c_info
        if small:
            converged = True
            break
    cov = np.full((p, p), np.nan)
    cov[np.ix_(free, free)] = np.linalg.inv(info[np.ix_(free, free)])
    se = np.sqrt(np.diag(cov))
    beta = np.where(free & (np.abs(beta) < DIVERGED), beta, np.nan)
    se = np.where(np.isnan(beta), np.nan, se)
    z = beta / se
    return CoxFit(
        names=names, coef=beta, se=se, covariance=cov, hr=np.exp(beta),
        hr_lower=np.exp(beta - Z_975 * se), hr_upper=np.exp(beta + Z_975 * se),
        z=z, p_value=2.0 * stats.norm.sf(np.abs(z)),
        loglik=loglik, loglik_null=loglik_null, iterations=iterations,
        evaluations=evaluations, converged=converged,
    )
