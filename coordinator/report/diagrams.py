"""Data for the page's diagrams, drawn in the browser by ``assets/diagrams.js`` (hand-written SVG).

Three diagrams: treatment pathways as a Sankey (cohort -> line 1 -> line 2 ...), attrition as a
flow of boxes (subjects left after each step, excluded to the side) and cohort overlap as a
two-set Venn per pair of cohorts. Each is a ``<div class="diagram">`` holding its data as JSON;
the script draws it, with a site and a cohort selector, and redraws when the linked table's
cohort filter changes.

Every number keeps its mark: a cell is ``{"n": value or null, "t": text, "k": kind}`` where kind
is ``""`` (visible), ``"sup"`` (suppressed by the site, text ``<5``), ``"lb"`` (a pooled lower
bound, text ``≥123``) or ``"all"`` (suppressed at every site, text ``<5 at all N sites``). A
suppressed cell is never drawn or written as 0.
"""

from __future__ import annotations

import json

import pandas as pd

from optima_common.results import SUPPRESSED

FLAG_KEY = ["result_id", "group_level", "strata_level", "variable_name", "variable_level", "additional_level"]


def _num_text(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:.4g}"


def cells(v, d: pd.DataFrame) -> list[dict]:
    """One mark-carrying cell per row of ``d`` (vectorised; rows of the network result)."""
    keys = list(zip(*[d[k].fillna("").astype(str) if k != "result_id" else d[k] for k in FLAG_KEY], strict=True))
    vals = pd.to_numeric(d["estimate_value"].where(d["estimate_value"] != SUPPRESSED), errors="coerce")
    out = []
    for key, raw, x, cdm, rid in zip(keys, d["estimate_value"], vals, d["cdm_name"], d["result_id"], strict=True):
        mcc = v.mcc.get(rid, "")
        if raw == SUPPRESSED:
            n_all = v.all_suppressed.get(key) if cdm == v.pooled else None
            out.append({"n": None, "t": f"<{mcc} at all {n_all} sites" if n_all and n_all > 1 else f"<{mcc} at its only site" if n_all else f"<{mcc}",
                        "k": "all" if n_all else "sup"})
        elif pd.isna(x):
            out.append({"n": None, "t": str(raw), "k": ""})
        elif cdm == v.pooled and key in v.lower:
            out.append({"n": float(x), "t": "≥" + _num_text(x), "k": "lb"})
        else:
            out.append({"n": float(x), "t": _num_text(x), "k": ""})
    return out


def embed(kind: str, title: str, data: dict, table: str = "", cohort_label: str = "cohort") -> str:
    """The diagram's placeholder with its JSON (``</`` escaped so the JSON cannot end the script)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    return (f'<div class="diagram" data-kind="{kind}" data-table="{table}" data-cohort-label="{cohort_label}" '
            f'data-title="{title}"><script type="application/json">{payload}</script></div>')


def after_title(section: str, diagram: str) -> str:
    """``diagram`` placed right under the section's first heading (or first, if it has none)."""
    i = section.find("</h2>")
    return section[:i + 5] + diagram + section[i + 5:] if i >= 0 else diagram + section


def _order(v, names) -> list[str]:
    present = set(names)
    return [c for c in v.cdms if c in present]


def pathways_diagram(v) -> str:
    """Sankey of the released treatment sequences per site and pooled; lines separated by '-'."""
    d = v.rows("treatment_pathways")
    d = d[(d["variable_name"] == "pathway") & (d["estimate_name"] == "count") & d["variable_level"].notna()
          & ~d["variable_level"].isin(["None", "NA", ""])]
    if d.empty:
        return ""
    tot = v.rows("treatment_pathways")
    tot = tot[(tot["variable_name"].str.lower() == "number subjects") & (tot["estimate_name"] == "count")]
    data: dict = {"sites": _order(v, d["cdm_name"]), "groups": {}}
    for (grp, cdm), g in d.groupby(["group_level", "cdm_name"], sort=False):
        t = tot[(tot["group_level"] == grp) & (tot["cdm_name"] == cdm)]
        data["groups"].setdefault(grp, {})[cdm] = {
            "total": cells(v, t)[0] if len(t) else None, "mcc": int(v.mcc.get(int(g["result_id"].iloc[0]), 5) or 5),
            "seq": [{"path": p, **c} for p, c in zip(g["variable_level"], cells(v, g), strict=True)]}
    return embed("sankey", "Treatment pathways (Sankey: line 1 → line 2 …)", data, "treatment_pathways",
                 "strata")


def attrition_diagram(v) -> str:
    """Flow of subjects through each cohort's steps (and the incidence/prevalence denominators')."""
    parts = []
    for rt, label in (("summarise_cohort_attrition", "cohort"), ("incidence_attrition", "incidence"),
                      ("prevalence_attrition", "prevalence")):
        d = v.rows(rt)
        if d.empty:
            continue
        if rt != "summarise_cohort_attrition":  # the overall populations only (both sexes, all ages)
            from coordinator.report.sections import readable_groups

            s = v.s[v.s["result_type"] == rt]
            for col, want in (("denominator_sex", "Both"), ("denominator_age_group", "0 to 150")):
                if col in s.columns:
                    s = s[s[col].astype(str) == want]
            d = readable_groups(v, d[d["result_id"].isin(s["result_id"])])
            d = d.assign(group_level=label + ": " + d["group_level"])
        parts.append(d[d["variable_name"].isin(["number_subjects", "excluded_subjects"])
                       & (d["estimate_name"] == "count")])
    if not parts:
        return ""
    d = pd.concat(parts)
    d = d.assign(_step=pd.to_numeric(d["additional_level"], errors="coerce")).sort_values(
        ["group_level", "_step"], kind="mergesort")
    d = d.assign(_cell=cells(v, d))
    data: dict = {"sites": _order(v, d["cdm_name"]), "groups": {}}
    for (grp, cdm), g in d.groupby(["group_level", "cdm_name"], sort=False):
        steps = []
        for (step, reason), s in g.groupby(["_step", "strata_level"], sort=True):
            by = dict(zip(s["variable_name"], s["_cell"], strict=True))
            steps.append({"reason": reason, "left": by.get("number_subjects"), "excl": by.get("excluded_subjects")})
        data["groups"].setdefault(grp, {})[cdm] = steps
    # first (shown first): cohorts before denominators, the longest flow first
    order = sorted(data["groups"], key=lambda g: (g.startswith(("incidence: ", "prevalence: ")), -max(len(x) for x in data["groups"][g].values())))
    data["groups"] = {g: data["groups"][g] for g in order}
    return embed("attrition", "Attrition flow (subjects left after each step; excluded to the right)", data,
                 "attrition")


def overlap_diagram(v) -> str:
    """Two-set Venn per pair of cohorts: only in the reference, in both, only in the comparator."""
    d = v.rows("summarise_cohort_overlap")
    d = d[d["estimate_name"] == "count"]
    if d.empty:
        return ""
    want = {"only in reference cohort": "a", "in both cohorts": "ab", "only in comparator cohort": "b"}
    d = d[d["variable_name"].str.lower().isin(want)]
    d = d.assign(_cell=cells(v, d), _part=d["variable_name"].str.lower().map(want))
    data: dict = {"sites": _order(v, d["cdm_name"]), "groups": {}}
    for (grp, cdm), g in d.groupby(["group_level", "cdm_name"], sort=False):
        names = str(grp).split(" &&& ")
        data["groups"].setdefault(grp, {})[cdm] = {
            "names": names if len(names) == 2 else [str(grp), ""],
            **dict(zip(g["_part"], g["_cell"], strict=True))}
    return embed("venn", "Cohort overlap (Venn per pair of cohorts)", data, "cohort_overlap",
                 "reference &&& comparator")
