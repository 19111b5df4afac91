"""An offline HTML view of one site's diagnostics, for the operator to read before sharing.

It shows exactly what would be released: EVERY row of the suppressed result (nothing cut; the
page's inlined script pages, searches, filters and sorts them), one row per released cell, with
suppressed cells shown as ``<N`` and the reason for each: *primary* (a count below the minimum
cell count, or a count in a group whose subject count is) or *secondary* (withheld although not
small, because a declared relation would reveal a small one; the relation is named, as the
disclosure audit returned it), or *derived* (an estimate computed from a withheld count).
Inlined CSS and JavaScript only; nothing is fetched.
"""

from __future__ import annotations

import html
import os
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from optima_common.fileio import write_atomic
from optima_common.results import SUPPRESSED, SummarisedResult

COUNT = re.compile(r"^(count|.+_count|number_.+)$")
#: the secondary frame's columns that identify a cell (the audit names no additional level)
SEC_KEY = ["result_type", "group_level", "strata_level", "variable_name", "variable_level", "estimate_name"]
COLUMNS = ["result_id", "group_name", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
           "additional_name", "additional_level", "estimate_name", "estimate_value"]


def _assets() -> tuple[str, str]:
    web = resources.files("optima_common.web")
    return (web / "tables.css").read_text(encoding="utf-8"), (web / "tables.js").read_text(encoding="utf-8")


def reasons(result: SummarisedResult, min_cell_count: int, secondary=None) -> pd.DataFrame:
    """The result's rows (every one) with ``shown`` (``<N`` for suppressed) and ``reason`` (empty if visible)."""
    d = result.data.copy()
    rt = dict(zip(result.settings["result_id"], result.settings["result_type"], strict=True))
    d.insert(1, "result_type", d["result_id"].map(rt))
    sup = d["estimate_value"] == SUPPRESSED
    d["shown"] = d["estimate_value"].where(~sup, f"<{min_cell_count}").fillna("")
    d["reason"] = ""
    d.loc[sup & d["estimate_name"].str.match(COUNT), "reason"] = (
        f"primary: count below the minimum cell count ({min_cell_count}), or in a group whose count is")
    d.loc[sup & ~d["estimate_name"].str.match(COUNT), "reason"] = "derived: computed from a withheld count"
    if secondary is not None and len(secondary):
        def norm(f: pd.DataFrame) -> pd.DataFrame:  # a missing level: None, NaN or "" (as read from the CSV)
            return f.fillna("").astype(str).replace({"None": "", "nan": "", "NA": ""})
        sec = norm(secondary[SEC_KEY]).assign(relation=secondary["relation"].astype(str)).drop_duplicates(SEC_KEY)
        rel = norm(d[SEC_KEY]).merge(sec, on=SEC_KEY, how="left")["relation"].to_numpy()
        hit = sup.to_numpy() & pd.notna(rel)
        d.loc[hit, "reason"] = ["secondary: " + str(r) for r in rel[hit]]
    return d


def _table(d: pd.DataFrame, name: str) -> str:
    cols = [c for c in COLUMNS if c != "estimate_value"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*cols, "value", "reason"])
    body = []
    for r in d[[*cols, "shown", "reason"]].itertuples(index=False, name=None):
        *keys, shown, why = ("" if x is None or (isinstance(x, float) and pd.isna(x)) else str(x) for x in r)
        cls = " class='sup'" if why else ""
        body.append("<tr>" + "".join(f"<td>{html.escape(k)}</td>" for k in keys)
                    + f"<td{cls}>{html.escape(shown)}</td><td>{html.escape(why)}</td></tr>")
    return (f"<table data-name='{html.escape(name)}' data-rows='{len(d)}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _section(result_type: str, data: pd.DataFrame, settings: pd.DataFrame) -> str:
    n_sup = int((data["reason"] != "").sum())
    title = f"{html.escape(result_type)} ({len(data)} rows, {n_sup} suppressed)"
    parts = [f"<h2 id='{html.escape(result_type)}'>{title}</h2>"]
    s = settings.drop(columns=["package_version"], errors="ignore").dropna(axis=1, how="all")
    parts.append(s.to_html(index=False, escape=True, na_rep="", classes="plain"))
    parts.append(_table(data, result_type) if len(data) else "<p class='meta'>Ran; no rows to report.</p>")
    return "\n".join(parts)


def secondary_html(secondary) -> str:
    """The secondary suppressions and the relation that made each necessary (no values)."""
    if secondary is None or not len(secondary):
        return "<h2 id='secondary'>Secondary suppressions</h2><p class='meta'>None were needed.</p>"
    counts = secondary["relation"].value_counts()
    summary = "".join(f"<li>{html.escape(str(k))}: {int(v)}</li>" for k, v in counts.items())
    return (f"<h2 id='secondary'>Secondary suppressions ({len(secondary)})</h2>"
            "<p class='meta'>Counts withheld although not small, because a declared relation would otherwise "
            f"reveal a small one. By relation:</p><ul>{summary}</ul>"
            + secondary.to_html(index=False, escape=True, na_rep="").replace("<table ", "<table data-name='secondary' ", 1))


def write_html(result: SummarisedResult, path: str | os.PathLike, *, title: str, min_cell_count: int,
               secondary=None) -> Path:
    path = Path(path)
    css, js = _assets()
    d = reasons(result, min_cell_count, secondary)
    types = list(dict.fromkeys(result.settings["result_type"]))
    toc = "".join(f"<li><a href='#{html.escape(t)}'>{html.escape(t)}</a></li>" for t in types)
    sections = [_section(t, d[d["result_type"] == t], result.settings[result.settings["result_type"] == t])
                for t in types]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{css}\nbody{{margin:2em}}.meta{{color:#555}}td.sup{{color:#a00;"
            f"font-weight:600}}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='meta'>What would leave the site: all {len(d)} released cells, every one listed (use the "
            f"search, filters and paging). Counts below {min_cell_count} are suppressed (shown as "
            f"&lt;{min_cell_count}) together with every number that would reveal them; the last column says why "
            f"each suppressed cell is withheld ({int((d['reason'] != '').sum())} in all).</p>"
            f"<ul>{toc}<li><a href='#secondary'>secondary suppressions</a></li></ul>{''.join(sections)}"
            f"{secondary_html(secondary)}<script>{js}</script></body></html>")
    return write_atomic(path, page.encode("utf-8"))
