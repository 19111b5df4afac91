"""The study's site-stratified Cox model fitted over Flower (``query.cox`` messages).

Newton-Raphson runs here (:func:`coordinator.pooling.cox.fit_federated_cox`); each evaluation is one
round of messages to the participating sites (the first, at beta = 0, comes with the sites' study
releases when the study round asked for it), whose answers are summed (a stratified model's
log likelihood, score and information are sums over strata). Participants are the sites that
released the study's bundle and answer the design's columns; a site that refuses the first
evaluation (fewer events than the spec's minimum) is left out with a note; a site that drops
out later invalidates the fit (no silently different model).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from coordinator.flower.exchange import send_and_receive
from coordinator.pooling.cox import CoxFit, fit_federated_cox
from optima_common import protocol as P
from optima_common.errors import CoordinatorError

log = logging.getLogger(__name__)


def _ask(grid: Grid, nodes: list[int], manifest_id: str, beta: list[float], timeout: float,
         errors: dict[int, str] | None = None) -> list[dict]:
    """The sites' replies; Flower's own error for a node (e.g. "Node Unavailable") goes to ``errors``."""
    msgs = [Message(RecordDict({P.COX_RECORD: ConfigRecord({P.MANIFEST_ID: manifest_id, P.BETA: beta})}), dst_node_id=n,
                    message_type=P.QUERY_COX, group_id=f"cox-{manifest_id}") for n in nodes]
    out = []
    for reply in send_and_receive(grid, msgs, timeout=timeout):
        if reply.has_error():
            if errors is not None:
                errors[reply.metadata.src_node_id] = str(reply.error.reason or f"error code {reply.error.code}")
            continue
        r = reply.content[P.REPLY_RECORD]
        out.append({"node": reply.metadata.src_node_id, **{k: r[k] for k in r.keys()}})
    return out


def fit_network_cox(grid: Grid, manifest_id: str, done_sites: set[str], *, timeout: float = 300.0,
                    first: dict[int, dict] | None = None) -> tuple[CoxFit | None, list[str]]:
    """The fit (or None when fewer than one site can take part) and notes on who took part.

    ``first``: the sites' answers to the design request that came with their releases, by
    Flower node (:func:`coordinator.flower.study.send_study`). Rounds: the design request
    (columns, and each site's answer at beta = 0) for the sites not in ``first`` (none when
    every site answered with its release), then one per further evaluation of the
    Newton-Raphson fit."""
    notes: list[str] = []
    rounds = 0  # rounds of query.cox messages this fit sent
    given = {n: r for n, r in (first or {}).items() if r["site"] in done_sites}
    answered = list(given.values())
    if done_sites - {r["site"] for r in given.values()}:
        # the design request, to every node not answered yet (a node's site is known only from its reply)
        rest = sorted(n for n in grid.get_node_ids() if n not in given)
        rounds += 1
        answered += [r for r in _ask(grid, rest, manifest_id, [], timeout) if r["site"] in done_sites]
    answered, twice = _one_per_site(answered)
    notes += [f"{site}: answered from more than one Flower node; only the first node's answers are used"
              for site in twice]
    described = [r for r in answered if P.COLUMNS in r]
    notes += [f"{r['site']}: left out of the Cox model ({r['reason']})" for r in answered if P.COLUMNS not in r]
    if not described:
        return None, [*notes, "no site answered the Cox design request"]
    columns = tuple(described[0][P.COLUMNS])
    if any(tuple(r[P.COLUMNS]) != columns for r in described):
        raise CoordinatorError("sites disagree on the Cox design columns; their study specs differ")
    by_node = {r["node"]: r["site"] for r in described}
    first_answers = [r for r in described if r["status"] != "done" or P.LOGLIK in r]
    older = sorted(r["node"] for r in described if r["status"] == "done" and P.LOGLIK not in r)
    if older:  # an agent that answers the design request with its columns alone: ask it at beta = 0
        rounds += 1
        first_answers += _ask(grid, older, manifest_id, [0.0] * len(columns), timeout)
    for r in first_answers:
        if r["status"] != "done":
            notes.append(f"{r['site']}: left out of the Cox model ({r['reason']})")
    members = sorted(r["node"] for r in first_answers if r["status"] == "done")
    missing = set(by_node) - {r["node"] for r in first_answers}
    notes += [f"{by_node[n]}: no answer to the first Cox evaluation" for n in sorted(missing)]
    if not members:
        return None, notes
    cache = {tuple(np.zeros(len(columns))): _summed([r for r in first_answers if r["status"] == "done"], len(columns))}

    def network(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        nonlocal rounds
        key = tuple(float(b) for b in beta)
        if key in cache:  # beta = 0 was asked already, with the participants' budget
            return cache.pop(key)
        errors: dict[int, str] = {}
        rounds += 1
        answers = _ask(grid, members, manifest_id, list(key), timeout, errors)
        ok = [r for r in answers if r["status"] == "done"]
        if len(ok) != len(members):
            raise CoordinatorError(f"Cox fit abandoned: {_why_missing(members, answers, errors, by_node, timeout)}")
        return _summed(ok, len(columns))

    try:
        fit = fit_federated_cox([network], len(columns), names=columns, max_abs_beta=P.COX_MAX_ABS_BETA)
    except CoordinatorError:
        raise
    except ValueError as exc:  # e.g. a singular information matrix at the estimate
        return None, [*notes, f"Cox model not estimated: {exc}"]
    notes.append(f"Cox model over {len(members)} site(s): {', '.join(sorted(by_node[n] for n in members))}; "
                 f"{fit.evaluations} evaluations in {rounds} round(s) of messages; {fit.convergence}")
    notes += fit.messages
    return fit, notes


def _one_per_site(replies: list[dict]) -> tuple[list[dict], list[str]]:
    """The first reply of each site (a site whose SuperNode runs twice must not count twice in
    the sums), and the sites that answered more than once."""
    kept: dict[str, dict] = {}
    twice: list[str] = []
    for r in replies:
        if r["site"] in kept:
            twice.append(r["site"])
        else:
            kept[r["site"]] = r
    return list(kept.values()), sorted(set(twice))


def _why_missing(members: list[int], answers: list[dict], errors: dict[int, str], by_node: dict[int, str],
                 timeout: float) -> str:
    """Per missing site, the real reason: its refusal, Flower's error, or no reply in time."""
    got = {r["node"]: r for r in answers}
    parts = []
    for n in members:
        r = got.get(n)
        if r is not None and r["status"] == "done":
            continue
        if r is not None:
            parts.append(f"{by_node[n]} answered {r['status']}: {r.get('reason', '')}")
        elif n in errors:
            parts.append(f"{by_node[n]}: {errors[n]} (reported by Flower)")
        else:
            parts.append(f"{by_node[n]}: no answer within {timeout:g} s")
    return "; ".join(parts)


def _summed(answers: list[dict], p: int) -> tuple[float, np.ndarray, np.ndarray]:
    loglik = sum(float(r["loglik"]) for r in answers)
    score = np.sum([np.asarray(r["score"], dtype=float) for r in answers], axis=0)
    info = np.sum([np.asarray(r["info"], dtype=float).reshape(p, p) for r in answers], axis=0)
    return loglik, score, info


def cox_section(fit: CoxFit | None, notes: list[str]) -> str:
    """An HTML section for the report: hazard ratios with 95% CIs, and who took part."""
    import html

    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    if fit is None:
        return f"<h2>Hazard ratios (site-stratified Cox)</h2><p>Not estimated.</p><ul>{items}</ul>"
    from coordinator.report.svg_plots import forest_svg

    df: pd.DataFrame = fit.to_frame()
    table = df.to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="not estimable", border=0)
    est = df.dropna(subset=["hr", "hr_lower", "hr_upper"])
    forest = ""
    if len(est):
        svg = forest_svg("Hazard ratios of death (95% CI), network", [
            (t, h, lo, hi) for t, h, lo, hi in est[["term", "hr", "hr_lower", "hr_upper"]].itertuples(index=False)],
            [], "hazard ratio (log scale)", log=True)
        forest = f"<figure>{svg}</figure>"
    return (f"<h2>Hazard ratios (site-stratified Cox, Breslow ties)</h2>{table}{forest}"
            f"<p>Likelihood ratio chi-square {fit.lr_statistic:.2f}. Not estimable: a level no site has, or one "
            f"whose coefficient runs to infinity (its few patients all die first).</p><ul>{items}</ul>")
