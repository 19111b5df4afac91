"""The sections of the network report, each a piece of HTML built from the network result."""

from __future__ import annotations

import html
import math

import pandas as pd

from coordinator.pooling.results import NetworkResult
from coordinator.report.plots import forest_png, km_png
from coordinator.store import SiteStatus
from optima_common.results import SUPPRESSED

FLAG_KEY = ["result_id", "group_level", "strata_level", "variable_name", "variable_level", "additional_level"]
MAX_FORESTS = 8


def esc(x: object) -> str:
    return html.escape("" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x))


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class View:
    """Lookup helpers over a network result for the sections."""

    def __init__(self, net: NetworkResult):
        self.net = net
        self.d = net.result.data
        self.s = net.result.settings
        self.pooled = net.pooled_name
        self.cdms = [x for x in dict.fromkeys(si.cdm_name for si in net.sites)] + [self.pooled]
        lb = self.d[(self.d["estimate_name"] == "lower_bound") & (self.d["cdm_name"] == self.pooled)]
        self.lower = set(map(tuple, lb[FLAG_KEY].fillna("").to_numpy().tolist()))
        self.mcc = dict(zip(self.s["result_id"], self.s["min_cell_count"], strict=True))

    def ids(self, result_type: str) -> list[int]:
        return [int(i) for i in self.s.loc[self.s["result_type"] == result_type, "result_id"]]

    def rows(self, result_type: str) -> pd.DataFrame:
        return self.d[self.d["result_id"].isin(self.ids(result_type))]

    def shown(self, row: pd.Series) -> str:
        v = row["estimate_value"]
        if v == SUPPRESSED:
            return f'<span class="sup">&lt;{esc(self.mcc.get(row["result_id"], ""))}</span>' \
                if "count" in row["estimate_name"] else '<span class="sup">suppressed</span>'
        text = esc(_num(v))
        key = tuple("" if pd.isna(row[k]) else row[k] for k in FLAG_KEY)
        if row["cdm_name"] == self.pooled and key in self.lower:
            return f'<span class="lb" title="lower bound: includes suppressed site cells">&ge;{text}</span>'
        return text

    def wide(self, d: pd.DataFrame, index: list[str], limit: int = 200) -> str:
        if d.empty:
            return "<p>none released</p>"
        d = d.assign(_txt=[self.shown(r) for _, r in d.iterrows()])
        w = d.pivot_table(index=index, columns="cdm_name", values="_txt", aggfunc="first", sort=False)
        w = w.reindex(columns=[c for c in self.cdms if c in w.columns]).head(limit)
        rows = [[esc(x) for x in (k if isinstance(k, tuple) else (k,))] + [v if isinstance(v, str) else ""
                for v in r] for k, r in zip(w.index, w.to_numpy().tolist(), strict=True)]
        return table([*index, *w.columns], rows)


def _num(v: str) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return f"{int(x):,}" if x.is_integer() else f"{x:.4g}"


def status_section(statuses: list[SiteStatus]) -> str:
    def t(x):
        return "" if x is None else x.strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [[esc(s.site), f'<span class="st-{esc(s.status)}">{esc(s.status)}</span>', esc(s.reason),
             t(s.first_sent_at), t(s.updated_at), t(s.bundle_received_at)] for s in statuses]
    return "<h2>Sites</h2>" + table(["site", "status", "reason", "first sent", "last update", "bundle received"], rows)


def provenance_section(v: View) -> str:
    rows = [[esc(si.site), esc(si.cdm_name), esc(si.provenance.cdm_release_date), esc(si.provenance.vocabulary_version),
             esc(si.provenance.package_version), esc(si.suppression.min_cell_count), esc(si.suppression.site_floor)]
            for si in v.net.sites]
    return "<h2>Provenance</h2>" + table(["site", "CDM name", "CDM release date", "vocabulary version",
                                          "package version", "min cell count", "site floor"], rows)


def counts_section(v: View) -> str:
    d = v.rows("summarise_cohort_count")
    d = d[d["estimate_name"] == "count"]
    return "<h2>Cohort counts</h2>" + v.wide(d, ["group_level", "variable_name"])


def attrition_section(v: View) -> str:
    d = v.rows("summarise_cohort_attrition")
    d = d[(d["variable_name"] == "number_subjects") & (d["estimate_name"] == "count")]
    d = d.assign(_r=pd.to_numeric(d["additional_level"], errors="coerce")).sort_values(
        ["group_level", "_r"], kind="mergesort")
    return "<h2>Attrition (number of subjects)</h2>" + v.wide(d, ["group_level", "additional_level", "strata_level"])


def characteristics_section(v: View) -> str:
    ids = v.ids("summarise_characteristics")
    d = v.d[v.d["result_id"].isin(ids[:1]) & (v.d["strata_name"] == "overall")]
    d = d[d["estimate_name"].isin(["count", "mean"])]
    return "<h2>Characteristics (overall; counts pooled, means per site)</h2>" + \
        v.wide(d, ["group_level", "variable_name", "variable_level", "estimate_name"], limit=120)


def _overall_rate_rows(v: View, kind: str) -> pd.DataFrame:
    s = v.s[v.s["result_type"] == kind]
    for col, want in (("denominator_sex", "Both"), ("denominator_age_group", "0 to 150")):
        if col in s.columns and (s[col] == want).any():
            s = s[s[col] == want]
    d = v.d[v.d["result_id"].isin(s["result_id"]) & v.d["additional_level"].str.endswith("&&& overall")]
    return d[(d["strata_name"] == "overall") & (d["variable_name"] == "Outcome")]


def rates_section(v: View, kind: str) -> str:
    est = "incidence_100000_pys" if kind == "incidence" else "prevalence"
    d = _overall_rate_rows(v, kind)
    title = "Incidence per 100,000 person-years" if kind == "incidence" else "Prevalence"
    if d.empty:
        return f"<h2>{title}</h2><p>none released</p>"
    idx = d.set_index(["group_level", "cdm_name", "estimate_name"])["estimate_value"]
    idx = idx[~idx.index.duplicated()]
    rows, figs = [], []
    sites = [c for c in v.cdms[:-1] if c in set(d["cdm_name"])]
    for group in dict.fromkeys(d["group_level"]):
        def val(cdm, name, g=group):
            x = idx.get((g, cdm, name))
            return None if x is None or x == SUPPRESSED else float(x)
        cells, site_pts = [esc(group)], []
        for cdm in sites:
            e, lo, hi = val(cdm, est), val(cdm, f"{est}_95CI_lower"), val(cdm, f"{est}_95CI_upper")
            if e is None:
                cells.append('<span class="sup">suppressed</span>' if (group, cdm, est) in idx.index else "not run")
            else:
                cells.append(f"{e:.4g} ({lo:.4g}&ndash;{hi:.4g})")
            if e is not None and hi is not None:
                site_pts.append((cdm, e, lo, hi))
        p = [val(v.pooled, n) for n in (est, f"{est}_95CI_lower", f"{est}_95CI_upper")]
        r = [val(v.pooled, f"{est}_random_effects{s}") for s in ("", "_95CI_lower", "_95CI_upper")]
        i2, excl = val(v.pooled, "i_squared"), val(v.pooled, "excluded_sites")
        cells.append("&ndash;" if p[0] is None else f"{p[0]:.4g} ({p[1]:.4g}&ndash;{p[2]:.4g})")
        cells.append("&ndash;" if r[0] is None else f"{r[0]:.4g} ({r[1]:.4g}&ndash;{r[2]:.4g})")
        cells.append("&ndash;" if i2 is None else f"{i2:.1f}%")
        cells.append("" if not excl else f"{int(excl)} site(s) left out (suppressed)")
        rows.append(cells)
        if len(site_pts) >= 2 and r[0] is not None and len(figs) < MAX_FORESTS:
            pooled_pts = [("pooled (sum)", *p), (f"random effects, I²={i2:.0f}%", *r)]
            png = forest_png(f"{group} ({kind}, overall period)", site_pts, pooled_pts, title, log=False)
            figs.append(f'<figure><img alt="forest plot {esc(group)}" src="data:image/png;base64,{png}"></figure>')
    header = ["denominator &&& outcome", *sites, "pooled (95% CI)", "random effects (95% CI)", "I²", "note"]
    return f"<h2>{title} (overall period, both sexes, all ages)</h2>" + table(header, rows) + "".join(figs)


def km_section(v: View) -> str:
    d = v.rows("survival_estimates")
    d = d[(d["strata_level"] == "overall") & (d["estimate_value"] != SUPPRESSED)]
    if d.empty:
        return "<h2>Survival (pooled Kaplan-Meier)</h2><p>no released survival curve</p>"
    out = ["<h2>Survival (pooled Kaplan-Meier from the sites' risk tables)</h2>"]
    for (grp, outcome), g in d.groupby(["group_level", "variable_level"], sort=False):
        curves = {}
        for cdm in v.cdms:
            c = g[g["cdm_name"] == cdm].pivot_table(index="additional_level", columns="estimate_name",
                                                    values="estimate_value", aggfunc="first")
            if c.empty or "estimate" not in c.columns:
                continue
            c = c.apply(pd.to_numeric, errors="coerce").dropna(subset=["estimate"])
            c.index = c.index.astype(int)
            c = c.sort_index()
            lo = c.get("estimate_95CI_lower", c["estimate"]).fillna(c["estimate"])
            hi = c.get("estimate_95CI_upper", c["estimate"]).fillna(c["estimate"])
            curves[cdm] = (list(c.index), list(c["estimate"]), list(lo), list(hi))
        ev = v.rows("survival_events")
        ev = ev[(ev["cdm_name"] == v.pooled) & (ev["strata_level"] == "overall") & (ev["group_level"] == grp)
                & (ev["variable_level"] == outcome) & (ev["estimate_name"] == "n_risk_count")]
        cells = [(float(r["additional_level"]), "<" if r["estimate_value"] == SUPPRESSED else
                  ("≥" if tuple("" if pd.isna(r[k]) else r[k] for k in FLAG_KEY) in v.lower else "")
                  + _num(r["estimate_value"])) for _, r in ev.iterrows()]
        png = km_png(f"{grp}: {outcome}", curves, {v.pooled: sorted(cells)})
        out.append(f'<figure><img alt="KM {esc(grp)} {esc(outcome)}" src="data:image/png;base64,{png}"></figure>')
        risk = v.rows("survival_events")
        risk = risk[(risk["strata_level"] == "overall") & (risk["group_level"] == grp)
                    & (risk["variable_level"] == outcome) & (risk["estimate_name"] == "n_risk_count")]
        out.append(f"<p>Number at risk, {esc(grp)}: {esc(outcome)}</p>"
                   + v.wide(risk.assign(day=risk["additional_level"].astype(int)).sort_values("day"), ["day"]))
    summ = v.rows("survival_summary")
    summ = summ[summ["estimate_name"].str.match(r"^(median_survival|survival_at_\d+)$|_count$")]
    out.append(v.wide(summ, ["strata_level", "variable_level", "estimate_name"], limit=60))
    return "".join(out)


def pathways_section(v: View) -> str:
    d = v.rows("treatment_pathways")
    d = d[d["estimate_name"] == "count"]
    return "<h2>Treatment pathways</h2>" + v.wide(d, ["strata_level", "variable_name", "variable_level"])


def lower_bounds_section(v: View, examples: int = 30) -> str:
    d = v.d[(v.d["estimate_name"] == "suppressed_sites") & (v.d["cdm_name"] == v.pooled)]
    types = dict(zip(v.s["result_id"], v.s["result_type"], strict=True))
    per_type = d["result_id"].map(types).value_counts()
    summary = table(["result type", "pooled rows that are lower bounds"],
                    [[esc(t), esc(n)] for t, n in per_type.items()])
    rows = [[esc(types.get(r.result_id)), esc(r.group_level), esc(r.strata_level), esc(r.variable_name),
             esc(r.variable_level), esc(r.additional_level), esc(r.estimate_value)]
            for r in d.head(examples).itertuples()]
    return (f"<h2>Pooled values that are lower bounds ({len(d)})</h2><p>Each includes at least one suppressed site "
            "cell, counted as nothing: the true network value is at least the one shown (&ge;). In the CSV they carry "
            "the estimates <code>lower_bound</code> and <code>suppressed_sites</code>.</p>" + summary
            + f"<p>First {min(examples, len(d))}:</p>"
            + table(["result type", "group", "strata", "variable", "level", "additional", "sites suppressed"], rows))
