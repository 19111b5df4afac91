"""The sections of the network report, each a piece of HTML built from the network result."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from coordinator.pooling.results import NetworkResult
from coordinator.report.svg_plots import forest_svg, rate_panels_svg
from coordinator.store import SiteStatus
from optima_common.results import SUPPRESSED

FLAG_KEY = ["result_id", "group_level", "strata_level", "variable_name", "variable_level", "additional_level"]


#: tables longer than this are written without the optional ``</td>``/``</tr>`` (20 sites: characteristics,
#: lower bounds); browsers build the same rows, and the 20-site report stays under 10 MB
COMPACT_ROWS = 2000


def esc(x: object) -> str:
    return html.escape("" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x))


def table(header: list[str], rows: list[list[str]], cls: str = "", name: str = "") -> str:
    """An HTML table; the page's script adds search, filters, sorting, paging and CSV download
    (``cls="plain"`` leaves it static). Every row is written: nothing is cut."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    if len(rows) > COMPACT_ROWS:  # HTML's optional end tags left out: the same table, a quarter smaller
        body = "".join("<tr><td>" + "<td>".join(map(str, r)) for r in rows)
    else:
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<table class="{cls}" data-name="{esc(name)}" data-rows="{len(rows)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def title_of(section: str, default: str) -> str:
    """The text of a section's first <h2> (short form for a tab)."""
    m = re.search(r"<h2>(.*?)</h2>", section, re.DOTALL)
    return re.sub(r"\s*\(.*$", "", html.unescape(re.sub(r"<[^>]+>", "", m.group(1)))) if m else default


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
        pooled = self.d[self.d["cdm_name"] == self.pooled]
        every = pooled[pooled["estimate_name"] == "all_sites_suppressed"]
        every = set(map(tuple, every[FLAG_KEY].fillna("").to_numpy().tolist()))
        n_sup = pooled[pooled["estimate_name"] == "suppressed_sites"]
        #: pooled cells suppressed at every site that has them -> how many sites
        self.all_suppressed = {k: int(n) for k, n in zip(map(tuple, n_sup[FLAG_KEY].fillna("").to_numpy().tolist()),
                                                          n_sup["estimate_value"], strict=True) if k in every}
        self.mcc = dict(zip(self.s["result_id"], self.s["min_cell_count"], strict=True))

    def ids(self, result_type: str) -> list[int]:
        return [int(i) for i in self.s.loc[self.s["result_type"] == result_type, "result_id"]]

    def rows(self, result_type: str) -> pd.DataFrame:
        return self.d[self.d["result_id"].isin(self.ids(result_type))]

    def shown_all(self, d: pd.DataFrame) -> list[str]:
        """:meth:`shown` of every row of ``d`` (one pass over columns, not a Series per row)."""
        cols = ["estimate_value", "cdm_name", "result_id", "estimate_name", *FLAG_KEY]
        blank = {k: d[k].where(d[k].notna(), "") for k in FLAG_KEY}
        keys = zip(*(blank[k].tolist() for k in FLAG_KEY), strict=True)
        out, memo = [], {}
        for (v, cdm, rid, name), key in zip(zip(*(d[c].tolist() for c in cols[:4]), strict=True), keys, strict=True):
            if v == SUPPRESSED or (cdm == self.pooled and key in self.lower):
                out.append(self._shown(v, cdm, rid, name, key))
                continue
            text = memo.get(v)
            if text is None:
                text = memo[v] = esc(_num(v))
            out.append(text)
        return out

    def shown(self, row: pd.Series) -> str:
        return self._shown(row["estimate_value"], row["cdm_name"], row["result_id"], row["estimate_name"],
                           tuple("" if pd.isna(row[k]) else row[k] for k in FLAG_KEY))

    def _shown(self, v, cdm_name, result_id, estimate_name, key: tuple) -> str:
        row = {"cdm_name": cdm_name, "result_id": result_id, "estimate_name": estimate_name}
        if v == SUPPRESSED and row["cdm_name"] == self.pooled:
            n = self.all_suppressed.get(key)
            if n:
                return (f'<span class="sup all" title="suppressed at all {n} sites that have this cell; the network '
                        f'value is unknown, not 0">&lt;{esc(self.mcc.get(row["result_id"], ""))} at '
                        f'{f"all {n} sites" if n > 1 else "its only site"}</span>')
        if v == SUPPRESSED:
            return f'<span class="sup">&lt;{esc(self.mcc.get(row["result_id"], ""))}</span>' \
                if "count" in row["estimate_name"] else '<span class="sup">suppressed</span>'
        text = esc(_num(v))
        if row["cdm_name"] == self.pooled and key in self.lower:
            return f'<span class="lb" title="lower bound: includes suppressed site cells">&ge;{text}</span>'
        return text

    def wide(self, d: pd.DataFrame, index: list[str], name: str = "", labels: list[str] | None = None) -> str:
        """Rows ``index`` by site columns (pooled last); every row, no cut."""
        if d.empty:
            return "<p>none released</p>"
        d = d.assign(_txt=self.shown_all(d))
        w = d.pivot_table(index=index, columns="cdm_name", values="_txt", aggfunc="first", sort=False)
        w = w.reindex(columns=[c for c in self.cdms if c in w.columns])
        rows = [[esc(x) for x in (k if isinstance(k, tuple) else (k,))] + [v if isinstance(v, str) else ""
                for v in r] for k, r in zip(w.index, w.to_numpy().tolist(), strict=True)]
        return table([*(labels or index), *w.columns], rows, name=name)


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
    return "<h2>Cohort counts</h2>" + v.wide(d, ["group_level", "variable_name"], name="cohort_counts",
                                             labels=["cohort", "variable"])


def attrition_section(v: View) -> str:
    d = v.rows("summarise_cohort_attrition")
    d = d[(d["variable_name"] == "number_subjects") & (d["estimate_name"] == "count")]
    d = d.assign(_r=pd.to_numeric(d["additional_level"], errors="coerce")).sort_values(
        ["group_level", "_r"], kind="mergesort")
    return "<h2>Attrition (number of subjects)</h2>" + v.wide(d, ["group_level", "additional_level", "strata_level"],
                                                              name="attrition", labels=["cohort", "step", "reason"])


def overlap_section(v: View) -> str:
    d = v.rows("summarise_cohort_overlap")
    d = d[d["estimate_name"].isin(["count", "percentage"])]
    if d.empty:
        return ""
    return ("<h2>Cohort overlap (subjects in both, only in one)</h2>"
            + v.wide(d, ["group_level", "variable_name", "estimate_name"], name="cohort_overlap",
                     labels=["reference &&& comparator", "overlap", "estimate"]))


def code_use_section(v: View) -> str:
    """Codes behind each cohort's concept sets, flagged: orphan codes (in the data, related to the
    concept set but not in it) and unmapped source codes (no standard concept)."""
    parts = []
    for rt, title, flag in (("code_use", "Code use (concepts that entered the cohorts)", ""),
                            ("orphan_code_use", "Orphan codes: related concepts in the data but not in the concept set",
                             "orphan"),
                            ("unmapped_codes", "Unmapped source codes (no standard concept)", "unmapped")):
        d = v.rows(rt)
        d = d[d["estimate_name"].isin(["record_count", "person_count", "count"])]
        if d.empty:
            continue
        parts.append(f"<h3>{esc(title)}</h3>" + v.wide(
            d, ["group_level", "variable_name", "variable_level", "additional_level", "estimate_name"], name=rt,
            labels=["cohort &&& codelist", "concept", "concept id", "vocabulary / source details", "estimate"]))
    return ("<h2>Code use, orphan and unmapped codes</h2>" + "".join(parts)) if parts else ""


def characteristics_section(v: View) -> str:
    ids = v.ids("summarise_characteristics")
    d = v.d[v.d["result_id"].isin(ids) & (v.d["strata_name"] == "overall")]
    d = d[d["estimate_name"].isin(["count", "percentage", "mean", "median"])]
    return ("<h2>Characteristics (overall; counts pooled, means per site)</h2>"
            + v.wide(d, ["group_level", "variable_name", "variable_level", "estimate_name"], name="characteristics",
                     labels=["cohort", "variable", "level", "estimate"]) + lsc_section(v))


def lsc_section(v: View) -> str:
    d = v.rows("summarise_large_scale_characteristics")
    d = d[d["estimate_name"].isin(["count", "percentage"])]
    if d.empty:
        return ""
    return ("<h3>Large-scale characteristics (concepts in windows before/after index)</h3>"
            + v.wide(d, ["group_level", "variable_level", "variable_name", "additional_level", "estimate_name"],
                     name="large_scale_characteristics",
                     labels=["cohort", "window", "concept", "table / analysis", "estimate"]))


def population_label(row: pd.Series) -> str:
    """A denominator population in words (IncidencePrevalence's settings), e.g. 'age 18 to 64, Female, 365 d prior'."""
    def get(col, default=""):
        x = row.get(col)
        return default if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    age, sex, prior = get("denominator_age_group", "0 to 150"), get("denominator_sex", "Both"), \
        get("denominator_days_prior_observation", "0")
    parts = ["all ages" if age == "0 to 150" else f"age {age}", "both sexes" if sex == "Both" else sex.lower(),
             f"{prior} d prior observation"]
    target = get("denominator_target_cohort_name", "None")
    if target not in ("", "None"):
        parts.append(f"within {target}")
    return ", ".join(parts)


def readable_groups(v: View, d: pd.DataFrame) -> pd.DataFrame:
    """Replace 'denominator_cohort_N &&& outcome' by 'outcome in <population in words>'."""
    labels = {int(r["result_id"]): population_label(r) for _, r in v.s.iterrows()}
    outcome = d["group_level"].str.split(" &&& ").str[-1]
    return d.assign(group_level=outcome + " — " + d["result_id"].map(labels).fillna(""))


def _ends_with(s: pd.Series, suffix: str) -> np.ndarray:
    """``s.str.endswith(suffix)`` as a mask (missing: False), tested once per distinct value (a 20-site
    network: 2.7M rows, a few thousand levels)."""
    codes, uniques = pd.factorize(s)  # missing: code -1, the False appended last
    return np.array([str(u).endswith(suffix) for u in uniques] + [False], dtype=bool)[codes]


def _overall_rate_rows(v: View, kind: str) -> pd.DataFrame:
    s = v.s[v.s["result_type"] == kind]
    for col, want in (("denominator_sex", "Both"), ("denominator_age_group", "0 to 150")):
        if col in s.columns and (s[col] == want).any():
            s = s[s[col] == want]
    d = v.d[v.d["result_id"].isin(s["result_id"]) & _ends_with(v.d["additional_level"], "&&& overall")]
    return readable_groups(v, d[(d["strata_name"] == "overall") & (d["variable_name"] == "Outcome")])


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
        if len(site_pts) >= 2 and r[0] is not None:
            pooled_pts = [("pooled (sum)", *p), (f"random effects, I²={i2:.0f}%", *r)]
            figs.append(f'<figure>{forest_svg(f"{group} ({kind}, overall period)", site_pts, pooled_pts, title, log=False)}'
                        "</figure>")
    header = ["outcome — population", *sites, "pooled (95% CI)", "random effects (95% CI)", "I²", "note"]
    return (f"<h2>{title} (overall period, both sexes, all ages)</h2>"
            + table(header, rows, name=kind) + yearly_figures(v, kind)
            + f"<h3>Forest plots ({len(figs)}: every outcome with two or more visible sites)</h3>" + "".join(figs))


def yearly_figures(v: View, kind: str) -> str:
    """Pooled rate by calendar year with 95% CIs, one panel per outcome; and by age group and sex."""
    est = "incidence_100000_pys" if kind == "incidence" else "prevalence"
    s = v.s[(v.s["result_type"] == kind)]
    if s.empty or "denominator_age_group" not in s.columns:
        return ""
    prior0 = s["denominator_days_prior_observation"].astype(str).isin(["0"]) if \
        "denominator_days_prior_observation" in s.columns else True
    d = v.d[v.d["result_id"].isin(s.loc[prior0, "result_id"]) & (v.d["cdm_name"] == v.pooled)
            & (v.d["variable_name"] == "Outcome") & v.d["estimate_name"].isin([est, f"{est}_95CI_lower", f"{est}_95CI_upper"])
            & _ends_with(v.d["additional_level"], "&&& years")]
    if d.empty:
        return ""
    meta = s.set_index("result_id")[["denominator_age_group", "denominator_sex"]]
    d = d.assign(outcome=d["group_level"].str.split(" &&& ").str[-1],
                 year=d["additional_level"].str[:4].astype(int),
                 age=d["result_id"].map(meta["denominator_age_group"]), sex=d["result_id"].map(meta["denominator_sex"]),
                 value=pd.to_numeric(d["estimate_value"], errors="coerce"))
    w = d.pivot_table(index=["outcome", "age", "sex", "year"], columns="estimate_name", values="value",
                      aggfunc="first").reset_index()
    w = w.rename(columns={est: "est", f"{est}_95CI_lower": "lo", f"{est}_95CI_upper": "hi"})
    unit = "per 100,000 person-years" if kind == "incidence" else "proportion"
    out = []
    for by, sel in (("all", (w["age"] == "0 to 150") & (w["sex"] == "Both")), ("sex", w["age"] == "0 to 150"),
                    ("age group", w["sex"] == "Both")):
        svg = rate_panels_svg(w[sel], by, f"pooled {kind} by year ({unit}), by {by}" if by != "all" else
                              f"pooled {kind} by year ({unit}), 95% CI")
        if svg:
            out.append(f"<figure>{svg}</figure>")
    return "<h3>By calendar year (network, no prior-observation requirement)</h3>" + "".join(out)


def pathways_section(v: View) -> str:
    d = v.rows("treatment_pathways")
    d = d[d["estimate_name"].isin(["count", "percentage"])]
    return "<h2>Treatment pathways</h2>" + v.wide(d, ["strata_level", "variable_name", "variable_level", "estimate_name"],
                                                  name="treatment_pathways",
                                                  labels=["strata", "variable", "pathway", "estimate"])


def lower_bounds_section(v: View) -> str:
    d = v.d[(v.d["estimate_name"] == "suppressed_sites") & (v.d["cdm_name"] == v.pooled)]
    every = d[[tuple("" if pd.isna(x) else x for x in k) in v.all_suppressed
               for k in d[FLAG_KEY].itertuples(index=False, name=None)]]
    d = d.drop(index=every.index)
    types = dict(zip(v.s["result_id"], v.s["result_type"], strict=True))
    per_type = d["result_id"].map(types).value_counts()
    summary = table(["result type", "pooled rows that are lower bounds"],
                    [[esc(t), esc(n)] for t, n in per_type.items()], name="lower_bounds_by_type")
    rows = [[esc(types.get(r.result_id)), esc(r.group_level), esc(r.strata_level), esc(r.variable_name),
             esc(r.variable_level), esc(r.additional_level), esc(r.estimate_value)]
            for r in d.itertuples()]
    return (f"<h2>Pooled values that are lower bounds ({len(d)})</h2><p>Each includes at least one suppressed site "
            "cell, counted as nothing: the true network value is at least the one shown (&ge;). In the CSV they carry "
            "the estimates <code>lower_bound</code> and <code>suppressed_sites</code>.</p>" + summary
            + table(["result type", "group", "strata", "variable", "level", "additional", "sites suppressed"], rows,
                    name="lower_bounds") + all_suppressed_table(v, every, types))


def all_suppressed_table(v: View, d: pd.DataFrame, types: dict) -> str:
    """How many pooled cells each result type has that every site suppressed (the cells themselves are
    marked where they appear: a list of them all would double the page)."""
    per_type = d["result_id"].map(types).value_counts()
    return (f"<h3>Pooled cells suppressed at every site ({len(d)})</h3><p>Every site that has the cell suppressed "
            "it: the network value is unknown (not 0) and shown as &lt;N at all k sites in the tables and diagrams. "
            "In the CSV the pooled <code>estimate_value</code> is <code>-</code> (suppressed) with the estimates "
            "<code>all_sites_suppressed</code> (TRUE) and <code>suppressed_sites</code> (k).</p>"
            + table(["result type", "pooled cells suppressed at every site"],
                    [[esc(t), esc(n)] for t, n in per_type.items()], name="all_sites_suppressed_by_type"))
