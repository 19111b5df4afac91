"""A static, offline HTML view of one site's diagnostics, for the operator to read before sharing.

It shows exactly what would be released: the suppressed result, with suppressed cells
shown as ``<N``. No scripts, no external resources.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from optima_common.fileio import write_atomic
from optima_common.results import SummarisedResult

MAX_ROWS = 2000
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}
td.sup{color:#a00;font-weight:600}h2{margin-top:2em}.meta{color:#555}"""
KEYS = ["group_name", "group_level", "strata_name", "strata_level", "variable_name", "variable_level",
        "additional_name", "additional_level"]


def _section(result_type: str, data: pd.DataFrame, settings: pd.DataFrame, min_cell_count: int) -> str:
    parts = [f"<h2 id='{html.escape(result_type)}'>{html.escape(result_type)}</h2>"]
    s = settings.drop(columns=["package_version"], errors="ignore").dropna(axis=1, how="all")
    parts.append(s.to_html(index=False, escape=True, na_rep=""))
    if data.empty:
        parts.append("<p class='meta'>Ran; no rows to report.</p>")
        return "\n".join(parts)
    d = data.copy()
    d["variable_level"] = d["variable_level"].fillna("")
    d["estimate_value"] = d["estimate_value"].fillna("").replace("-", f"<{min_cell_count}")
    wide = d.pivot_table(index=["result_id", *KEYS], columns="estimate_name", values="estimate_value",
                         aggfunc="first", sort=False).reset_index()
    wide.columns.name = None
    for col in ("group_name", "strata_name", "additional_name"):  # drop keys that never vary
        if wide[col].nunique() == 1 and wide[col].iloc[0] == "overall":
            wide = wide.drop(columns=[col, col.replace("_name", "_level")])
    shown = wide.head(MAX_ROWS)
    table = shown.to_html(index=False, escape=True, na_rep="")
    table = table.replace(f"<td>&lt;{min_cell_count}</td>", f"<td class='sup'>&lt;{min_cell_count}</td>")
    parts.append(table)
    if len(wide) > MAX_ROWS:
        parts.append(f"<p class='meta'>{len(wide) - MAX_ROWS} more rows in the CSV.</p>")
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
            + secondary.head(MAX_ROWS).to_html(index=False, escape=True, na_rep=""))


def write_html(result: SummarisedResult, path: str | os.PathLike, *, title: str, min_cell_count: int,
               secondary=None) -> Path:
    path = Path(path)
    types = list(dict.fromkeys(result.settings["result_type"]))
    toc = "".join(f"<li><a href='#{html.escape(t)}'>{html.escape(t)}</a></li>" for t in types)
    sections = []
    for t in types:
        ids = result.settings.loc[result.settings["result_type"] == t, "result_id"]
        sections.append(_section(t, result.data[result.data["result_id"].isin(ids)],
                                 result.settings[result.settings["result_id"].isin(ids)], min_cell_count))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='meta'>What would leave the site: counts below {min_cell_count} are suppressed "
            f"(shown as &lt;{min_cell_count}) together with every number that would reveal them.</p>"
            f"<ul>{toc}<li><a href='#secondary'>secondary suppressions</a></li></ul>{''.join(sections)}"
            f"{secondary_html(secondary)}</body></html>")
    return write_atomic(path, page.encode("utf-8"))
