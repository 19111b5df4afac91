"""Figures drawn from the *released* table only (suppressed cells are shown as withheld, never as values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from optima_common.results import SUPPRESSED, SummarisedResult


def _rows(r: SummarisedResult, rt: str) -> pd.DataFrame:
    ids = r.settings.loc[r.settings["result_type"] == rt, "result_id"]
    return r.data[r.data["result_id"].isin(ids)]


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s.where(s != SUPPRESSED), errors="coerce")


def draw_all(r: SummarisedResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, fn in (("oncoplot.png", oncoplot), ("hotspots.png", hotspots), ("subtype_immune.png", subtype_immune),
                     ("alluvial.png", alluvial)):
        fig = fn(r, plt)
        p = Path(out) / name
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def _withheld_note(ax, n: int) -> None:
    if n:
        ax.text(0.99, 0.01, f"{n} cell(s) withheld (small counts)", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="grey")


def oncoplot(r, plt):
    """Persons per gene by variant class (stacked), top genes; the released gene percentage on the side."""
    vc = _rows(r, "variant_classification")
    from site_agent.genomics.readers import NON_SILENT

    vc = vc[(vc["estimate_name"] == "count") & (vc["variable_name"] != "number subjects")
            & vc["variable_level"].isin(NON_SILENT)]
    mf = _rows(r, "mutation_frequency")
    pct = mf[(mf["estimate_name"] == "percentage")].set_index("variable_level")["estimate_value"]
    cnt = mf[(mf["estimate_name"] == "count") & (mf["variable_name"] == "gene")]
    order = _num(cnt["estimate_value"]).fillna(-1).to_numpy()
    genes = list(cnt["variable_level"].to_numpy()[np.argsort(-order, kind="stable")])  # most mutated on top
    wide = vc.assign(v=_num(vc["estimate_value"])).pivot_table(index="variable_name", columns="variable_level",
                                                                values="v", aggfunc="sum").reindex(genes[::-1]).fillna(0)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(genes))))
    left = np.zeros(len(wide))
    for cls in wide.columns:
        ax.barh(wide.index, wide[cls], left=left, label=cls)
        left += wide[cls].to_numpy()
    for i, g in enumerate(wide.index):
        ax.text(left[i], i, f" {pct.get(g, SUPPRESSED)}%", va="center", fontsize=7)
    ax.set_xlabel("persons with a non-silent variant of the class (released counts)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _withheld_note(ax, int((vc["estimate_value"] == SUPPRESSED).sum()))
    ax.set_title("Mutation landscape")
    return fig


def hotspots(r, plt):
    h = _rows(r, "hotspot_counts")
    h = h[(h["estimate_name"] == "count") & (h["variable_name"] == "hotspot") & (h["strata_name"] != "overall")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, strata in zip(axes, ("er_status", "her2_status")):
        s = h[h["strata_name"] == strata].assign(v=lambda x: _num(x["estimate_value"]))
        wide = s.pivot_table(index="variable_level", columns="strata_level", values="v", aggfunc="sum")
        wide.plot.bar(ax=ax)
        ax.set_title(f"hotspots by {strata.replace('_', ' ')}")
        ax.set_ylabel("persons")
        _withheld_note(ax, int((s["estimate_value"] == SUPPRESSED).sum()))
    return fig


def subtype_immune(r, plt):
    """Box of released quartiles (q25, median, q75) of each score by subtype."""
    im = _rows(r, "immune_infiltration")
    im = im[im["strata_name"] == "subtype"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, score in zip(axes, ("immune", "stromal")):
        s = im[im["group_level"] == score]
        stats = []
        for lv, g in s.groupby("strata_level", sort=True):
            v = dict(zip(g["estimate_name"], _num(g["estimate_value"])))
            if all(np.isfinite(v.get(k, np.nan)) for k in ("q25", "median", "q75")):
                stats.append({"label": lv, "q1": v["q25"], "med": v["median"], "q3": v["q75"],
                              "whislo": v["q25"], "whishi": v["q75"], "fliers": []})
        if stats:
            ax.bxp(stats, showfliers=False)
        ax.set_title(f"{score} score by PAM50 subtype (quartiles)")
    return fig


def alluvial(r, plt):
    """Subtype -> actionable gene -> drug class, band widths from released actionability counts."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    a = _rows(r, "actionability")
    a = a[(a["estimate_name"] == "count") & (a["strata_name"] == "subtype") & (a["variable_name"] != "number subjects")]
    a = a.assign(v=_num(a["estimate_value"])).dropna(subset=["v"])
    a = a[a["v"] > 0]
    fig, ax = plt.subplots(figsize=(10, 5))
    if a.empty:
        ax.text(0.5, 0.5, "no released actionable counts", ha="center")
        ax.axis("off")
        return fig
    a = a.assign(mut=a["variable_name"] + " " + a["variable_level"],
                 drug=a["additional_level"].str.split(" \\(").str[0])
    cols = [("strata_level", 0.0), ("mut", 1.0), ("drug", 2.0)]
    total = a["v"].sum()
    pos = {}
    top = 0.0
    for col, x in cols:
        y = 0.0
        for lv, v in a.groupby(col)["v"].sum().sort_index().items():
            pos[(col, lv)] = [y, y]  # top, running cursor for outgoing/incoming
            ax.add_patch(plt.Rectangle((x - 0.03, y), 0.06, v / total * 0.9, color="grey"))
            ax.text(x + (0.05 if x < 2 else -0.05), y + v / total * 0.45, f"{lv} ({int(v)})", fontsize=7,
                    va="center", ha="left" if x < 2 else "right")
            y += v / total * 0.9 + 0.02
        top = max(top, y)
    out_cur = {k: v[0] for k, v in pos.items()}
    in_cur = dict(out_cur)
    for (c0, _), (c1, x1) in zip(cols[:-1], cols[1:]):
        x0 = x1 - 1.0
        for (l0, l1), v in a.groupby([c0, c1])["v"].sum().items():
            h = v / total * 0.9
            y0, y1 = out_cur[(c0, l0)], in_cur[(c1, l1)]
            out_cur[(c0, l0)] += h
            in_cur[(c1, l1)] += h
            verts = [(x0 + 0.03, y0), (x0 + 0.5, y0), (x1 - 0.5, y1), (x1 - 0.03, y1), (x1 - 0.03, y1 + h),
                     (x1 - 0.5, y1 + h), (x0 + 0.5, y0 + h), (x0 + 0.03, y0 + h), (x0 + 0.03, y0)]
            codes = [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO, MPath.CURVE4,
                     MPath.CURVE4, MPath.CURVE4, MPath.CLOSEPOLY]
            ax.add_patch(PathPatch(MPath(verts, codes), alpha=0.35, lw=0))
    ax.set_xlim(-0.3, 2.3)
    ax.set_ylim(-0.02, top + 0.02)
    ax.axis("off")
    ax.set_title("subtype -> actionable mutation -> therapy (released counts; a person may appear in several bands)")
    return fig
