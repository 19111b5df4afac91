"""How a study's results changed between versions (runs of a scheduled study).

:func:`version_changes` compares the network ``summarised_result`` (each site's rows under its
``cdm_name`` and the pooled rows, see :mod:`coordinator.pooling.results`) of one version with
the previous version that has results, cell by cell; :func:`changes_section` renders it as an
HTML section for the report (self-contained: no CSS or scripts beyond the report's own).
Bundles of re-sent manifests count for their study (:func:`coordinator.store.ops.study_bundles`).
"""

from __future__ import annotations

import html

import pandas as pd

from coordinator.store import ResultsStore, ops
from optima_common.errors import CoordinatorError
from optima_common.results import SUPPRESSED

KEY = ["cdm_name", "result_type", "group_name", "group_level", "strata_name", "strata_level", "variable_name",
       "variable_level", "estimate_name", "additional_name", "additional_level"]
COLUMNS = ["study_id", "version", "previous_version", *KEY, "previous", "current", "change", "change_kind"]


def version_cells(store: ResultsStore, manifest_id: str) -> pd.DataFrame:
    """One version's network result as cells: KEY columns (plus an occurrence index) and ``value``."""
    from coordinator.pooling.cache import pooled_result

    if not ops.study_digests(store, manifest_id):
        return pd.DataFrame(columns=[*KEY, "n", "value"])
    res = pooled_result(store, manifest_id).result  # pooled once, kept in the store
    types = res.settings.set_index("result_id")["result_type"]
    data = res.data.assign(result_type=res.data["result_id"].map(types))
    data = data[KEY + ["estimate_value"]].fillna("").rename(columns={"estimate_value": "value"})
    data["n"] = data.groupby(KEY).cumcount()  # the same cell twice in one version (rare): matched in order
    return data


def _kind(prev: str | float, cur: str | float) -> str:
    if pd.isna(prev):
        return "new"
    if pd.isna(cur):
        return "removed"
    if cur == SUPPRESSED and prev != SUPPRESSED:
        return "now suppressed"
    if prev == SUPPRESSED and cur != SUPPRESSED:
        return "no longer suppressed"
    return "changed"


def version_changes(store: ResultsStore, study_id: str, version: int | None = None) -> pd.DataFrame:
    """Cells of ``version`` (default: the newest with results) that differ from the previous version.

    Columns: :data:`COLUMNS`; ``change`` is current - previous where both are numbers. Empty
    (with the columns) when the study has a single version with results or nothing changed.
    """
    runs = [r for r in ops.runs(store, study_id) if ops.study_digests(store, r.manifest_id)]
    if not runs:
        raise CoordinatorError(f"study {study_id!r} has no versioned runs with results in the store")
    if version is None:
        version = runs[-1].version
    idx = next((i for i, r in enumerate(runs) if r.version == version), None)
    if idx is None:
        raise CoordinatorError(f"study {study_id!r} has no version {version} with results "
                               f"(versions: {', '.join(str(r.version) for r in runs)})")
    if idx == 0:
        return pd.DataFrame(columns=COLUMNS)
    prev_run, cur_run = runs[idx - 1], runs[idx]
    prev = version_cells(store, prev_run.manifest_id).rename(columns={"value": "previous"})
    cur = version_cells(store, cur_run.manifest_id).rename(columns={"value": "current"})
    both = prev.merge(cur, on=[*KEY, "n"], how="outer")
    both = both[both["previous"].fillna("\0") != both["current"].fillna("\0")].copy()
    p, c = pd.to_numeric(both["previous"], errors="coerce"), pd.to_numeric(both["current"], errors="coerce")
    both["change"] = c - p
    both["change_kind"] = [_kind(a, b) for a, b in zip(both["previous"], both["current"], strict=True)]
    both.insert(0, "previous_version", prev_run.version)
    both.insert(0, "version", cur_run.version)
    both.insert(0, "study_id", study_id)
    return both.sort_values(KEY + ["n"]).reset_index(drop=True)[COLUMNS]


def changes_section(store: ResultsStore, study_id: str, version: int | None = None, *, limit: int = 300) -> str:
    """``<h2>Changes since the previous version</h2>`` and a table (at most ``limit`` rows)."""
    df = version_changes(store, study_id, version)
    title = "<h2>Changes since the previous version</h2>"
    if df.empty:
        return title + "<p>No earlier version with results, or nothing changed.</p>"
    e = html.escape
    v, pv = int(df["version"].iloc[0]), int(df["previous_version"].iloc[0])
    shown = ["cdm_name", "result_type", "group_level", "strata_level", "variable_name", "variable_level",
             "estimate_name", "additional_level", "previous", "current", "change", "change_kind"]
    head = "".join(f"<th>{e(c)}</th>" for c in shown)
    body = "".join("<tr>" + "".join(f"<td>{e('' if pd.isna(r[c]) else f'{r[c]:g}' if c == 'change' else str(r[c]))}"
                                    "</td>" for c in shown) + "</tr>" for _, r in df.head(limit).iterrows())
    more = f"<p>{len(df) - limit} more changed cells are not shown.</p>" if len(df) > limit else ""
    counts = df["change_kind"].value_counts()
    summary = ", ".join(f"{n} {e(k)}" for k, n in counts.items())
    return (f"{title}<p>Version {v} against version {pv}: {len(df)} cells differ ({summary}). "
            f"&ldquo;{e(SUPPRESSED)}&rdquo; is a suppressed cell.</p><table><tr>{head}</tr>{body}</table>{more}")
