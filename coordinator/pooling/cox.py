"""Coordinator side of the federated, site-stratified Cox model: Newton-Raphson on sums.

Mirrors R ``survival::coxph(Surv(time, status) ~ x + strata(site), ties = "breslow")``
(``coxph.fit``: Newton-Raphson from beta = 0, step halving when the log partial likelihood
decreases, variance = inverse information at the estimate, Wald CIs). Each site is a
stratum, so the network's log partial likelihood, score and information are the sums of
the sites' answers (``site_agent.analyses.cox.site_score_information`` behind the site's
guard). The coordinator never sees patient rows; it only asks each site at the current
coefficients. Nothing is imported from the site agent: a site is any callable
``beta -> (loglik, score, information)``, in-process today and over the federation later.

Aliased columns, as ``coxph`` does: the pooled information at beta = 0 is factorised in
column order (R's ``cholesky2``, tolerance ``eps^0.75`` times its largest diagonal); a column
whose pivot falls below it is a linear combination of earlier columns (or carries no
information at all: a level no site has) and is not estimable - NA, named in ``aliased``;
the model is fitted on the other columns.

A diverging coefficient (monotone likelihood, e.g. a level without events): ``coxph``
stops when the log-likelihood has converged and warns "Loglik converged before variable
...; coefficient may be infinite". Here the same test (the Newton step at the end still
large: > 1e-9 and > sqrt(1e-9) |coef|) or a coefficient about to pass ``max_abs_beta`` (the
bound sites refuse beyond) stops the fit; those columns are reported in ``diverging`` with
NA estimates and a message, and the others' variance is taken with them held fixed.

Deviations from ``coxph.fit``: convergence is on the Newton step (max |step| <= tol *
(1 + max |beta|)) rather than on the relative log-likelihood change, so the estimate is
accurate to ``tol`` and not only the log-likelihood; that step is computed from the pooled
answers at the current estimate, so convergence costs no extra round of the sites; no ``iter.max`` warning object, the
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
HELD_FRACTION = 0.75  # a runaway coefficient is held at this share of the sites' |beta| bound
TOLER_CHOL = float(np.finfo(float).eps) ** 0.75  # coxph.control(toler.chol)
LOGLIK_EPS = 1e-9  # coxph.control(eps)
TOLER_INF = LOGLIK_EPS ** 0.5  # coxph.control(toler.inf)


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
    aliased: tuple[str, ...] = ()
    diverging: tuple[str, ...] = ()
    #: the fit stopped at its convergence rule for the estimated coefficients; ``converged`` also
    #: asks that none diverges (as coxph's warning would)
    estimates_converged: bool = False

    @property
    def convergence(self) -> str:
        """A reader's sentence on how the fit ended."""
        if self.converged:
            return "converged"
        if self.estimates_converged and self.diverging:
            return (f"the estimated coefficients converged; {', '.join(self.diverging)} diverge"
                    f"{'s' if len(self.diverging) == 1 else ''} (not estimable, see below)")
        return f"did not converge after {self.iterations} iteration(s): treat its estimates with caution"

    @property
    def messages(self) -> list[str]:
        """Plain-language notes on columns that could not be estimated."""
        out = []
        if self.aliased:
            out.append(f"not estimable (aliased: collinear with earlier columns or without information): "
                       f"{', '.join(self.aliased)}")
        if self.diverging:
            out.append(f"coefficient diverges (monotone likelihood: e.g. no events in a level, or a covariate "
                       f"that separates events from survivors), hazard ratio not estimable: "
                       f"{', '.join(self.diverging)}")
        return out

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


def aliased_columns(info: np.ndarray, toler: float = TOLER_CHOL) -> np.ndarray:
    """Boolean mask of columns that are linear combinations of earlier ones in ``info``.

    R's ``cholesky2`` in column order: the pivot of column j is its variance left after the
    kept earlier columns; below ``toler * max(diag)`` the column is aliased."""
    info = np.asarray(info, dtype=np.float64)
    p = info.shape[0]
    eps = toler * max(float(np.max(np.diag(info), initial=0.0)), 0.0)
    keep: list[int] = []
    aliased = np.zeros(p, dtype=bool)
    for j in range(p):
        pivot = info[j, j]
        if keep:
            b = info[keep, j]
            pivot = pivot - b @ np.linalg.solve(info[np.ix_(keep, keep)], b)
        if not np.isfinite(pivot) or pivot <= eps:
            aliased[j] = True
        else:
            keep.append(j)
    return aliased


def fit_federated_cox(
    sites: Sequence[Site],
    p: int,
    *,
    tol: float = 1e-9,
    max_iter: int = 25,
    names: Sequence[str] | None = None,
    max_abs_beta: float | None = None,
) -> CoxFit:
    """Fit the site-stratified Cox model by Newton-Raphson on the summed site answers.

    Starts at beta = 0. Aliased columns (see :func:`aliased_columns`) are left out and
    reported NA. Each iteration solves I(beta) step = U(beta); if the log partial
    likelihood at beta + step is lower, the step is halved (up to 30 times). Converged when
    the step at the current beta is small: max |step| <= tol * (1 + max |beta|); the current
    beta is then the estimate (not evaluated again). A coefficient that would pass ``max_abs_beta`` runs
    away (monotone likelihood): it is held at ``HELD_FRACTION`` of the bound on its side, the
    others take their Newton step in the same evaluation and are then fitted given it, and it is
    reported NA in ``diverging``. A coefficient whose
    step has not converged when the log-likelihood has stops the fit the same way. Standard errors from the inverse pooled information of
    the estimable columns at the estimate; 95% Wald intervals exp(coef -/+ 1.96 se).
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
    aliased = aliased_columns(info)
    free = ~aliased
    if not free.any():
        raise ValueError("no covariate carries information (no events, or every column constant)")
    diverging = np.zeros(p, dtype=bool)
    evaluations, iterations, converged = 1, 0, False
    while iterations < max_iter:
        iterations += 1
        step = np.zeros(p)
        step[free] = _newton_step(score[free], info[np.ix_(free, free)])
        if max_abs_beta is not None and np.any(np.abs(beta + step) > max_abs_beta):
            # the sites would refuse: these coefficients run away (monotone likelihood). Hold them
            # far out on their side (as coxph's own iterations end up) and fit the others.
            runaway = free & (np.abs(beta + step) > max_abs_beta)
            diverging |= runaway
            free = free & ~runaway
            beta = beta.copy()
            beta[runaway] = np.sign(step[runaway]) * HELD_FRACTION * max_abs_beta
            if not free.any():
                break
            # one evaluation for both moves: the held columns at their value and the others' Newton
            # step from the answers in hand (the held columns' move left out of it). Damped Newton
            # goes on from that point (the problem given the held columns is concave), so only the
            # number of rounds changes (docs/performance.md). A step that would pass the sites'
            # bound is not taken: the held point alone is asked.
            moved = beta.copy()
            moved[free] += _newton_step(score[free], info[np.ix_(free, free)])
            if np.all(np.abs(moved) <= max_abs_beta):
                beta = moved
            loglik, score, info = _pooled(sites, beta, p)
            evaluations += 1
            continue
        if float(np.abs(step).max()) <= tol * (1.0 + float(np.abs(beta).max())):
            # the Newton step at this evaluated beta is below tol: beta is the estimate, and its
            # information (already pooled) gives the variance; no further round of the sites
            converged = True
            break
        for _ in range(MAX_HALVINGS + 1):
            cand = beta + step
            c_ll, c_score, c_info = _pooled(sites, cand, p)
            evaluations += 1
            # tiny tolerance: at the optimum the log-likelihood is flat to rounding error
            if c_ll >= loglik - 1e-12 * max(1.0, abs(loglik)):
                break
            step = step / 2.0
        else:
            break  # no ascent along the Newton direction: cannot improve further
        ll_converged = abs(1.0 - loglik / c_ll) <= LOGLIK_EPS if c_ll != 0 else abs(loglik) <= LOGLIK_EPS
        beta, loglik, score, info = cand, c_ll, c_score, c_info
        if ll_converged:
            nxt = np.zeros(p)
            try:
                nxt[free] = np.linalg.solve(info[np.ix_(free, free)], score[free])
            except np.linalg.LinAlgError:
                nxt[free] = np.inf
            infs = free & (np.abs(nxt) > LOGLIK_EPS) & (np.abs(nxt) > TOLER_INF * np.abs(beta))
            if infs.any():
                diverging |= infs
                converged = True  # the log-likelihood has converged; the others are at their estimate
                break
    est = free & ~diverging
    cov = np.full((p, p), np.nan)
    if est.any():
        try:
            cov[np.ix_(est, est)] = np.linalg.inv(info[np.ix_(est, est)])
        except np.linalg.LinAlgError:
            raise ValueError("the pooled information matrix is singular at the estimate") from None
    se = np.sqrt(np.diag(cov))
    beta = np.where(est, beta, np.nan)
    z = beta / se
    return CoxFit(
        names=names, coef=beta, se=se, covariance=cov, hr=np.exp(beta),
        hr_lower=np.exp(beta - Z_975 * se), hr_upper=np.exp(beta + Z_975 * se),
        z=z, p_value=2.0 * stats.norm.sf(np.abs(z)),
        loglik=loglik, loglik_null=loglik_null, iterations=iterations,
        evaluations=evaluations, converged=converged and not diverging.any(), estimates_converged=converged,
        aliased=tuple(n for n, a in zip(names, aliased) if a),
        diverging=tuple(n for n, dv in zip(names, diverging) if dv),
    )
